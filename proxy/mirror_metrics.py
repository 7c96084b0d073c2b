"""The mirror's Prometheus families: shadow calls made, skipped and failed, their latency and
time to first byte, and calls in flight, queued and spent on today, all by candidate."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from proxy.loop_metrics import LoopCounter, LoopHistogram
from proxy.metrics import LATENCY_BUCKETS


class MirrorMetrics:
    """Per-candidate shadow-call metrics, registered on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Updated on every shadow call, from the event loop only: lock-free instruments.
        self.calls = LoopCounter(
            "shadoweval_mirror_calls",
            "Shadow calls made to a candidate (finished or failed), by candidate.",
            ["candidate"],
            registry,
        )
        self.skipped = LoopCounter(
            "shadoweval_mirror_skipped",
            "Shadow calls not made, by candidate and reason "
            "(queue_full, rate_limit, daily_budget, closed, shutdown).",
            ["candidate", "reason"],
            registry,
        )
        self.errors = LoopCounter(
            "shadoweval_mirror_errors",
            "Shadow calls that failed, by candidate and kind "
            "(timeout, connect, http, invalid, dropped).",
            ["candidate", "kind"],
            registry,
        )
        self.latency = LoopHistogram(
            "shadoweval_mirror_latency_seconds",
            "Duration of successful shadow calls, by candidate.",
            ["candidate"],
            LATENCY_BUCKETS,
            registry,
        )
        self.ttft = LoopHistogram(
            "shadoweval_mirror_ttft_seconds",
            "Time to the first streamed byte of successful streaming shadow calls, by candidate.",
            ["candidate"],
            LATENCY_BUCKETS,
            registry,
        )
        self.in_flight = Gauge(
            "shadoweval_mirror_in_flight",
            "Shadow calls in progress, by candidate.",
            ["candidate"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "shadoweval_mirror_queue_depth",
            "Shadow calls waiting for a worker, by candidate.",
            ["candidate"],
            registry=registry,
        )
        self.spend = Gauge(
            "shadoweval_mirror_spend_today_usd",
            "Cost of today's (UTC) shadow calls made by this process, by candidate.",
            ["candidate"],
            registry=registry,
        )
