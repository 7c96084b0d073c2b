"""/metrics of a proxy run as `--workers N`: every worker's figures, summed.

The workers share one port, so a scrape reaches whichever worker the kernel picks. Served
from that worker's registry alone, a counter would jump between the workers' values from
scrape to scrape. Instead each worker writes a snapshot of its registry into a directory the
parent made for the run, every `every_s` and once more when it stops, and /metrics answers
with this worker's live figures plus every other worker's last snapshot, summed series by
series: counters, histogram buckets and gauges (requests in flight, queue depths, spend)
add up across workers. So a scrape shows the whole proxy, with the other workers' figures at
most `every_s` old. Names and labels are those of a single process; `_created` samples,
which cannot be summed, are left out.

Counters must never go down from one scrape to the next, or Prometheus takes the drop for a
restart and counts the whole value again. Live figures beside the others' older snapshots
could do just that: a scrape answered by worker A counts A's latest requests, and the next
one, answered by B, would count them only from A's last snapshot. So the answering worker
first writes the snapshot it is about to report: every figure a scrape has shown is then on
disk for whichever worker answers the next one. A snapshot costs the worker's event loop
about 1.4 ms (two candidates; measured with timeit), once every `every_s` and once per
scrape; a single process shares nothing and pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
from collections.abc import Iterable
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from proxy.lake.writer_child import Snapshot, snapshot

log = structlog.get_logger("shadoweval.proxy")

SNAPSHOT_EVERY_S = 1.0


def snapshot_path(directory: Path, index: int) -> Path:
    return directory / f"worker-{index}.metrics"


def forget(directory: Path, index: int) -> None:
    """Remove worker `index`'s snapshot, and the directory once it is the last one out (for a
    worker outliving its parent, which would otherwise have removed the directory)."""
    snapshot_path(directory, index).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty yet: another worker is still stopping
        directory.rmdir()


class WorkerMetrics(Collector):
    """This worker's registry plus the other workers' snapshots, as one set of families."""

    def __init__(
        self,
        directory: Path,
        index: int,
        registry: CollectorRegistry,
        every_s: float = SNAPSHOT_EVERY_S,
    ) -> None:
        self.directory = directory
        self.index = index
        self.registry = registry  # this worker's own metrics
        self.every_s = every_s
        self._own = snapshot_path(directory, index)

    def write(self, snap: Snapshot | None = None) -> None:
        """Replace this worker's snapshot file (atomically: readers see an old or a new one)."""
        tmp = self.directory / f".worker-{self.index}.metrics.tmp"
        data = snapshot(self.registry) if snap is None else snap
        tmp.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, self._own)

    async def run(self) -> None:
        """Write a snapshot every `every_s` until cancelled, then a last one."""
        try:
            while True:
                try:
                    self.write()
                except OSError as exc:  # a full or vanished directory: the next turn retries
                    log.warning("worker metrics not shared", error=str(exc))
                await asyncio.sleep(self.every_s)
        finally:
            with contextlib.suppress(OSError):
                self.write()

    def _others(self) -> dict[int, Snapshot]:
        """The other workers' last snapshots, by worker index."""
        out = {}
        for path in self.directory.glob("worker-*.metrics"):
            index = path.name.removeprefix("worker-").removesuffix(".metrics")
            if path == self._own or not index.isdigit():
                continue
            # A file being replaced or from a worker that never wrote one: skipped this time.
            with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError):
                out[int(index)] = pickle.loads(path.read_bytes())
        return out

    def collect(self) -> Iterable[Metric]:
        own = snapshot(self.registry)
        try:
            self.write(own)  # what this scrape shows, every later one shows at least
        except OSError as exc:
            log.warning("worker metrics not shared", error=str(exc))
        snaps = {**self._others(), self.index: own}
        merged: Snapshot = {}
        # Always summed in worker order, whichever worker answers: floating-point sums taken
        # in another order can differ in the last bit, and a `_sum` one bit lower than the
        # last scrape's is a drop all the same.
        for index in sorted(snaps):
            for family, (typ, doc, samples) in snaps[index].items():
                _, _, into = merged.setdefault(family, (typ, doc, {}))
                for key, value in samples.items():
                    into[key] = into.get(key, 0.0) + value
        for family, (typ, doc, samples) in merged.items():
            metric = Metric(family, doc, typ)
            for (name, labels), value in samples.items():
                metric.add_sample(name, dict(labels), value)
            yield metric


def merged_registry(shared: WorkerMetrics) -> CollectorRegistry:
    """A registry to render for /metrics: every worker's figures, summed."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(shared)
    return registry
