"""Speed and limits: latency figures from all traffic, and each target's checks against them.

A check is 'met' only when the whole interval lies within the limit, 'missed' when it lies
wholly beyond, and 'probably met' / 'probably missed' when the point estimate is on one
side but the interval crosses the limit.
"""

from __future__ import annotations

import math

import numpy as np

from analysis.results import Check, CostFigures, LatencyFigures, ReliabilityFigures
from analysis.settings import AnalysisSettings
from analysis.stats.estimate import Estimate
from analysis.stats.latency import quantile, slo_compliance
from analysis.traffic import TrafficFigures

CURVE_POINTS = 120  # points kept per plotted curve


def cdf_points(values: np.ndarray) -> list[tuple[float, float]]:
    """Points of the empirical CDF of sorted values, at evenly spaced shares."""
    n = len(values)
    if n == 0:
        return []
    levels = np.linspace(0.0, 1.0, CURVE_POINTS + 1)
    idx = np.minimum((levels * (n - 1)).round().astype(int), n - 1)
    return [(float(values[i]), float(p)) for i, p in zip(idx, levels, strict=True)]


def _quantiles(values: np.ndarray, s: AnalysisSettings) -> list[Estimate | None]:
    if len(values) == 0:
        return [None, None, None]
    return [
        quantile(values, q, conf=s.conf_level, n_boot=s.n_boot, seed=s.seed)
        for q in (0.5, 0.95, 0.99)
    ]


def latency_figures(traffic: TrafficFigures | None, s: AnalysisSettings) -> LatencyFigures:
    """p50/p95/p99 of latency and TTFT with intervals, and CDF points for plots."""
    lat = traffic.latency_ms if traffic else np.empty(0)
    ttft = traffic.ttft_ms if traffic else np.empty(0)
    p50, p95, p99 = _quantiles(lat, s)
    t50, t95, t99 = _quantiles(ttft, s)
    return LatencyFigures(
        len(lat), p50, p95, p99, len(ttft), t50, t95, t99, cdf_points(lat), cdf_points(ttft)
    )


def status(est: Estimate | None, limit: float) -> str:
    """How sure we are that an estimate keeps an upper limit (see the module docstring)."""
    if est is None or not math.isfinite(est.value):
        return "no data"
    if est.hi <= limit:
        return "met"
    if est.lo > limit:
        return "missed"
    return "probably met" if est.value <= limit else "probably missed"


def checks(
    s: AnalysisSettings,
    latency: LatencyFigures,
    reliability: ReliabilityFigures,
    cost: CostFigures,
    traffic: TrafficFigures | None,
) -> list[Check]:
    """Every configured SLO and constraint held against this target's figures."""
    out: list[Check] = []
    if s.slo.latency_p95_ms is not None:
        limit = s.slo.latency_p95_ms
        share = None
        if traffic is not None and len(traffic.latency_all_ms):
            share = slo_compliance(traffic.latency_all_ms, limit, s.conf_level)
        out.append(Check("latency_p95_ms", limit, latency.p95, status(latency.p95, limit), share))
    if s.slo.ttft_p95_ms is not None:
        limit = s.slo.ttft_p95_ms
        share = None
        if traffic is not None and len(traffic.ttft_ms):
            share = slo_compliance(traffic.ttft_ms, limit, s.conf_level)
        out.append(
            Check("ttft_p95_ms", limit, latency.ttft_p95, status(latency.ttft_p95, limit), share)
        )
    if s.constraints.max_error_rate is not None:
        limit = s.constraints.max_error_rate
        est = reliability.error_rate
        out.append(Check("error_rate", limit, est, status(est, limit)))
    if s.constraints.max_cost_per_1k_usd is not None:
        limit = s.constraints.max_cost_per_1k_usd
        out.append(Check("cost_per_1k_usd", limit, cost.per_1k, status(cost.per_1k, limit)))
    return out
