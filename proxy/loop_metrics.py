"""Counters and histograms for the request path, updated without locks from the event loop.

prometheus_client takes a lock on every update, so that threads can share a metric; one
proxied request made about ten such updates, 8 us of the event loop's time. These
instruments are plain dictionaries instead, updated only from the thread that runs the
event loop, and turned into Prometheus samples when `/metrics` is scraped (a `Collector`,
so they sit in the app's registry beside every other metric). The output is what
prometheus_client prints for the same metric: `_total` and `_created` for a counter;
`_bucket` (cumulative, with `+Inf`), `_count`, `_sum` and `_created` for a histogram.

A series appears once it was first updated, as a prometheus_client child does. Scraping
from another thread reads a count that may be one update behind, never a torn one.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


def _created_series() -> bool:
    """Whether `_created` samples are exported (prometheus_client's own switch for them:
    PROMETHEUS_DISABLE_CREATED_SERIES or `disable_created_metrics()`)."""
    return bool(getattr(metrics, "_use_created", True))


def _named(labelnames: tuple[str, ...], labels: tuple[str, ...]) -> dict[str, str]:
    """Label names to values; values are str()-ed as prometheus_client does."""
    return {name: str(value) for name, value in zip(labelnames, labels, strict=True)}


class LoopCounter(Collector):
    """A counter by label values; `inc(labels)` from the event loop's thread only."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        self._created: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        """Add `amount` to the series of `labels` (one value per label name, in order)."""
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        try:
            self.values[labels] += amount
        except KeyError:
            self._new(labels)
            self.values[labels] += amount

    def touch(self, labels: tuple[str, ...]) -> None:
        """Create the series of `labels` at 0 if new (so it is exported before use)."""
        if labels not in self.values:
            self._new(labels)

    def _new(self, labels: tuple[str, ...]) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {labels!r}")
        self._created[labels] = time.time()
        self.values[labels] = 0.0

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, "counter")

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "counter")
        created = _created_series()
        for labels, value in list(self.values.items()):
            named = _named(self.labelnames, labels)
            metric.add_sample(self.name + "_total", named, value)
            if created:
                metric.add_sample(self.name + "_created", named, self._created[labels])
        yield metric


class _Series:
    """One histogram series: a count per bucket (not cumulative), their sum, when created."""

    __slots__ = ("counts", "created", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.sum = 0.0
        self.created = time.time()


class LoopHistogram(Collector):
    """A histogram by label values; `observe(labels, value)` from the event loop's thread only."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        if list(buckets) != sorted(buckets) or not buckets:
            raise ValueError(f"{name}: buckets must be a non-empty ascending sequence")
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._bounds = [float(b) for b in buckets]
        if self._bounds[-1] != math.inf:
            self._bounds.append(math.inf)  # the +Inf bucket, as prometheus_client adds it
        self.series: dict[tuple[str, ...], _Series] = {}
        registry.register(self)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        """Count `value` in the first bucket whose upper bound is at least `value`."""
        series = self.series.get(labels)
        if series is None:
            series = self.touch(labels)
        if value == value:  # NaN fits no bucket; prometheus_client adds it to the sum only
            series.counts[bisect_left(self._bounds, value)] += 1
        series.sum += value

    def touch(self, labels: tuple[str, ...]) -> _Series:
        """The series of `labels`, created empty if new (so it is exported before use)."""
        series = self.series.get(labels)
        if series is None:
            if len(labels) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {labels!r}")
            series = self.series[labels] = _Series(len(self._bounds))
        return series

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, "histogram")

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "histogram")
        bounds = [floatToGoString(b) for b in self._bounds]
        created = _created_series()
        has_sum = self._bounds[0] >= 0  # prometheus_client leaves _sum out otherwise
        for labels, series in list(self.series.items()):
            named = _named(self.labelnames, labels)
            counts, total = list(series.counts), series.sum
            cumulative = 0.0
            for bound, n in zip(bounds, counts, strict=True):
                cumulative += n
                metric.add_sample(self.name + "_bucket", {"le": bound, **named}, cumulative)
            metric.add_sample(self.name + "_count", named, cumulative)
            if has_sum:
                metric.add_sample(self.name + "_sum", named, total)
            if created:
                metric.add_sample(self.name + "_created", named, series.created)
        yield metric


class LoopGauge(Collector):
    """A gauge without labels that goes up and down; `inc()`/`dec()` from the loop's thread."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.value = 0.0
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, "gauge")

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "gauge")
        metric.add_sample(self.name, {}, self.value)
        yield metric
