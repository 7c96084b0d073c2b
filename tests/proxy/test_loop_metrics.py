"""The lock-free instruments against prometheus_client itself, fed the same updates."""

from __future__ import annotations

import math
import random
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from proxy.loop_metrics import LoopCounter, LoopGauge, LoopHistogram
from proxy.metrics import LATENCY_BUCKETS

_CREATED = re.compile(r"^(\S+_created\{.*\}|\S+_created) \S+$", re.M)


def _without_created_times(text: str) -> str:
    return _CREATED.sub(r"\1 T", text)


def _feed(seed: int) -> tuple[CollectorRegistry, CollectorRegistry]:
    """The same random updates into prometheus_client's metrics and into ours."""
    rng = random.Random(seed)
    ref, ours = CollectorRegistry(), CollectorRegistry()
    ref_c = Counter("t_requests", "Requests.", ["route", "status"], registry=ref)
    ref_h = Histogram("t_seconds", "Seconds.", ["route"], buckets=LATENCY_BUCKETS, registry=ref)
    ref_g = Gauge("t_in_flight", "In flight.", registry=ref)
    our_c = LoopCounter("t_requests", "Requests.", ["route", "status"], ours)
    our_h = LoopHistogram("t_seconds", "Seconds.", ["route"], LATENCY_BUCKETS, ours)
    our_g = LoopGauge("t_in_flight", "In flight.", ours)
    # Every bound exactly, values between and beyond them, zero, negatives and NaN.
    values = [*LATENCY_BUCKETS, 0.0, -1.0, 1e9, math.nan]
    values += [rng.lognormvariate(-4, 2) for _ in range(2000)]
    rng.shuffle(values)
    for v in values:
        route, status = rng.choice(["/v1/a", "/v1/b"]), rng.choice(["200", "500"])
        ref_c.labels(route, status).inc()
        our_c.inc((route, status))
        ref_h.labels(route).observe(v)
        our_h.observe((route,), v)
        if rng.random() < 0.6:
            ref_g.inc()
            our_g.inc()
        else:
            ref_g.dec()
            our_g.dec()
    return ref, ours


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_text_exposition_is_prometheus_clients(seed: int) -> None:
    ref, ours = _feed(seed)
    ref_text = generate_latest(ref).decode()
    our_text = generate_latest(ours).decode()
    assert _without_created_times(our_text) == _without_created_times(ref_text)


def test_openmetrics_exposition_is_prometheus_clients() -> None:
    ref, ours = _feed(4)
    assert _without_created_times(generate_openmetrics(ours).decode()) == _without_created_times(
        generate_openmetrics(ref).decode()
    )


def test_sample_values_read_back_through_the_registry() -> None:
    reg = CollectorRegistry()
    c = LoopCounter("x_calls", "Calls.", ["candidate"], reg)
    h = LoopHistogram("x_seconds", "Seconds.", ["candidate"], (0.1, 1.0), reg)
    c.touch(("a",))
    h.touch(("a",))
    assert reg.get_sample_value("x_calls_total", {"candidate": "a"}) == 0
    assert reg.get_sample_value("x_seconds_count", {"candidate": "a"}) == 0
    c.inc(("a",), 2.5)
    h.observe(("a",), 0.1)  # a value equal to a bound falls in that bound's bucket
    h.observe(("a",), 0.5)
    assert reg.get_sample_value("x_calls_total", {"candidate": "a"}) == 2.5
    assert reg.get_sample_value("x_seconds_bucket", {"candidate": "a", "le": "0.1"}) == 1
    assert reg.get_sample_value("x_seconds_bucket", {"candidate": "a", "le": "1.0"}) == 2
    assert reg.get_sample_value("x_seconds_bucket", {"candidate": "a", "le": "+Inf"}) == 2
    assert reg.get_sample_value("x_seconds_sum", {"candidate": "a"}) == pytest.approx(0.6)


def test_wrong_labels_and_buckets_are_refused() -> None:
    reg = CollectorRegistry()
    c = LoopCounter("y_calls", "Calls.", ["candidate", "kind"], reg)
    h = LoopHistogram("y_seconds", "Seconds.", ["candidate"], (1.0,), reg)
    with pytest.raises(ValueError, match="expected labels"):
        c.inc(("a",))
    with pytest.raises(ValueError, match="expected labels"):
        h.observe(("a", "b"), 1.0)
    with pytest.raises(ValueError, match="ascending"):
        LoopHistogram("z_seconds", "Seconds.", [], (2.0, 1.0), reg)
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounter("y_calls", "Again.", ["candidate"], reg)


@pytest.mark.parametrize(
    "buckets", [(0.5, 1.0, math.inf), (-1.0, 0.0, 1.0)], ids=["own-inf", "negative-bound"]
)
def test_histograms_with_an_inf_or_a_negative_bound_print_as_prometheus_clients(
    buckets: tuple[float, ...],
) -> None:
    ref, ours = CollectorRegistry(), CollectorRegistry()
    ref_h = Histogram("u_seconds", "Seconds.", ["route"], buckets=buckets, registry=ref)
    our_h = LoopHistogram("u_seconds", "Seconds.", ["route"], buckets, ours)
    for v in (-2.0, -1.0, 0.0, 0.7, 1.0, 5.0, math.inf):
        ref_h.labels("/v1/a").observe(v)
        our_h.observe(("/v1/a",), v)
    assert _without_created_times(generate_latest(ours).decode()) == _without_created_times(
        generate_latest(ref).decode()
    )


def test_created_series_follow_prometheus_clients_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("prometheus_client.metrics._use_created", False)
    ref, ours = _feed(5)
    text = generate_latest(ours).decode()
    assert "_created" not in text
    assert text == generate_latest(ref).decode()


def test_counters_refuse_to_go_down_and_label_values_are_printed_as_text() -> None:
    reg = CollectorRegistry()
    c = LoopCounter("v_calls", "Calls.", ["status"], reg)
    with pytest.raises(ValueError, match="non-negative"):
        c.inc(("200",), -1)
    c.inc((200,))  # type: ignore[arg-type]  # a caller's slip must not break the scrape
    assert 'v_calls_total{status="200"} 1.0' in generate_latest(reg).decode()
