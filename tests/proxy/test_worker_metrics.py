"""`proxy.worker_metrics`: what /metrics shows when several workers share one port.

Each worker here is a registry with real prometheus_client instruments and its own
`WorkerMetrics` over one shared directory, as `--workers N` sets them up (the whole
processes are tested in test_server.py).
"""

from __future__ import annotations

import random
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.worker_metrics import WorkerMetrics, merged_registry


class Worker:
    def __init__(self, directory: Path, index: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("reqs", "Requests.", ["route"], registry=self.registry)
        self.latency = Histogram(
            "lat_seconds", "Latency.", buckets=(0.1, 1.0), registry=self.registry
        )
        self.in_flight = Gauge("in_flight", "In flight.", registry=self.registry)
        self.shared = WorkerMetrics(directory, index, self.registry)
        self.merged = merged_registry(self.shared)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """/metrics as this worker answers it, parsed back: sample → value."""
        text = generate_latest(self.merged).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def test_a_scrape_sums_every_worker_and_leaves_out_created(tmp_path: Path) -> None:
    a, b = Worker(tmp_path, 0), Worker(tmp_path, 1)
    a.requests.labels("/chat").inc(3)
    b.requests.labels("/chat").inc(4)
    b.requests.labels("/embed").inc()
    a.latency.observe(0.05)
    b.latency.observe(0.5)
    a.in_flight.set(2)
    b.in_flight.set(5)
    b.shared.write()  # b's periodic snapshot
    seen = a.scrape()
    assert seen[("reqs_total", (("route", "/chat"),))] == 7
    assert seen[("reqs_total", (("route", "/embed"),))] == 1
    assert seen[("lat_seconds_bucket", (("le", "0.1"),))] == 1
    assert seen[("lat_seconds_bucket", (("le", "1.0"),))] == 2
    assert seen[("lat_seconds_count", ())] == 2
    assert seen[("in_flight", ())] == 7
    assert not [name for name, _ in seen if name.endswith("_created")]


def test_counters_never_go_down_whichever_worker_answers(tmp_path: Path) -> None:
    """Requests land on either worker and scrapes alternate between them at random; every
    counter a scrape shows is at least what any earlier scrape showed (else Prometheus
    would take the drop for a restart and count everything again)."""
    rng = random.Random(7)
    workers = [Worker(tmp_path, i) for i in range(3)]
    for w in workers:
        w.shared.write()
    last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for step in range(300):
        w = rng.choice(workers)
        if rng.random() < 0.7:
            w.requests.labels(rng.choice(["/chat", "/embed"])).inc()
            w.latency.observe(rng.random())
        elif rng.random() < 0.2:
            w.shared.write()  # a periodic snapshot, whenever it falls
        else:
            seen = w.scrape()
            for key, value in seen.items():
                if key[0] != "in_flight":  # a gauge may go either way
                    assert value >= last.get(key, 0.0), (step, key)
            last.update(seen)
    # Once every worker has written its last snapshot, any worker shows the exact totals.
    for w in workers:
        w.shared.write()
    total = sum(
        w.registry.get_sample_value("reqs_total", {"route": "/chat"}) or 0.0 for w in workers
    )
    assert {w.scrape()[("reqs_total", (("route", "/chat"),))] for w in workers} == {total}


def test_a_torn_or_foreign_file_is_skipped_not_fatal(tmp_path: Path) -> None:
    a = Worker(tmp_path, 0)
    a.requests.labels("/chat").inc(2)
    (tmp_path / "worker-1.metrics").write_bytes(b"\x80\x05 not a whole pickle")
    (tmp_path / "worker-2.metrics").write_bytes(b"")
    assert a.scrape()[("reqs_total", (("route", "/chat"),))] == 2
