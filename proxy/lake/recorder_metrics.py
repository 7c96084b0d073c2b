"""The recorder's Prometheus families, and how the proxy serves them when its rows are
written by the lake-writer process (`proxy.lake.writer_process`).

`RecorderMetrics` are the families a `Recorder` updates as it works. In the writer process
they live in that process; `WriterMetrics` serves them on the proxy's /metrics from the
snapshots the writer reports, summed over writer restarts, plus the rows the proxy itself
dropped or holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from proxy.lake.writer_child import BUFFERED, Snapshot, snapshot

DROPPED = "shadoweval_recorder_dropped"
WRITTEN = "shadoweval_recorder_rows_written"


class RecorderMetrics:
    """The recorder's Prometheus metrics, registered on the registry it is given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = PromCounter(
            "shadoweval_recorder_records",
            "Rows accepted by the recorder, by dataset.",
            ["dataset"],
            registry=registry,
        )
        self.written = PromCounter(
            "shadoweval_recorder_rows_written",
            "Rows written to the lake, by dataset.",
            ["dataset"],
            registry=registry,
        )
        self.segments = PromCounter(
            "shadoweval_recorder_segments_written",
            "Segments written to the lake, by dataset.",
            ["dataset"],
            registry=registry,
        )
        self.dropped = PromCounter(
            "shadoweval_recorder_dropped",
            "Rows the recorder dropped, by dataset and reason "
            "(buffer_full, closed, invalid, write_failed).",
            ["dataset", "reason"],
            registry=registry,
        )
        self.flush_errors = PromCounter(
            "shadoweval_recorder_flush_errors",
            "Segment writes that failed (their rows are retried).",
            registry=registry,
        )
        self.buffered = Gauge(
            "shadoweval_recorder_buffered_rows",
            "Rows held in memory: buffered, being written or waiting for a retry.",
            registry=registry,
        )
        self.flush_seconds = Histogram(
            "shadoweval_recorder_flush_seconds",
            "Time to convert, redact and write one flush.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )


class WriterMetrics(Collector):
    """The recorder's metric families: the writers' counters summed over restarts, plus ours."""

    def __init__(self) -> None:
        # A zero snapshot gives every family its type and help before the first report.
        zero = CollectorRegistry()
        RecorderMetrics(zero)
        self._zero = snapshot(zero)
        self.past: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        self.current: Snapshot = {}
        self.dropped: Counter[tuple[str, str]] = Counter()  # (dataset, reason) dropped here
        self.held = 0

    def retire(self) -> None:
        """The current writer ended: its counters become part of the past."""
        for family, (typ, _, samples) in self.current.items():
            if typ in ("counter", "histogram"):
                for key, value in samples.items():
                    self.past[(family, *key)] = self.past.get((family, *key), 0.0) + value
        self.current = {}

    def value(self, family: str, sample: str, labels: dict[str, str]) -> float:
        key = (sample, tuple(sorted(labels.items())))
        now = self.current.get(family, ("", "", {}))[2].get(key, 0.0)
        return self.past.get((family, *key), 0.0) + now

    def collect(self) -> Iterable[Metric]:
        for family, (typ, doc, zero) in self._zero.items():
            metric = Metric(family, doc, typ)
            if family == BUFFERED:
                metric.add_sample(BUFFERED, {}, float(self.held))
                yield metric
                continue
            # In the order first seen (a histogram's buckets stay in increasing order).
            keys = dict.fromkeys(zero)
            keys.update(dict.fromkeys(self.current.get(family, ("", "", {}))[2]))
            keys.update(dict.fromkeys((s, lab) for (f, s, lab) in self.past if f == family))
            if family == DROPPED:
                for dataset, reason in self.dropped:
                    keys[(DROPPED + "_total", (("dataset", dataset), ("reason", reason)))] = None
            for sample, labels in keys:
                value = self.value(family, sample, dict(labels))
                if family == DROPPED:
                    lab = dict(labels)
                    value += self.dropped[(lab["dataset"], lab["reason"])]
                metric.add_sample(sample, dict(labels), value)
            yield metric
