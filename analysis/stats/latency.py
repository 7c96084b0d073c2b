"""Latency percentiles with intervals, and the share of requests within a latency SLO.

The interval for a quantile uses order statistics (Hahn & Meeker 1991, ch. 5): the
number of observations below the true q-quantile is Binomial(n, q), so
[x_(l), x_(u)] covers it with probability P(l <= K < u) >= conf for any continuous
distribution. This is what the percentile bootstrap of a sample quantile approximates
(both put the bounds about z * sqrt(n q (1 - q)) ranks either side of n q), but it is
exact, free of resampling noise and O(n), which matters with a million requests. Where
too few observations lie beyond the quantile for a bound at this confidence (e.g. p99
of 200 requests), that bound is infinite: the data cannot bound it.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.stats import binom

from analysis.stats.estimate import Estimate
from analysis.stats.proportions import wilson_interval


def _finite(values: np.ndarray) -> np.ndarray:
    """The finite values (failed requests without a latency are left to the caller)."""
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


@functools.lru_cache(maxsize=256)
def order_statistic_ranks(n: int, q: float, conf: float = 0.95) -> tuple[int, int]:
    """1-based ranks (l, u) with P(l <= Binomial(n, q) < u) >= conf; 0 or n + 1 when unbounded."""
    tail = (1.0 - conf) / 2.0
    lo = int(binom.ppf(tail, n, q))  # smallest j with P(K <= j) >= tail
    if binom.cdf(lo, n, q) <= tail:
        lo += 1
    hi = int(binom.ppf(1.0 - tail, n, q)) + 1  # P(K >= hi) <= tail
    return lo, hi


def quantile(
    values: np.ndarray, q: float, *, conf: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """The q-quantile (numpy's linear interpolation) with an exact order-statistic interval.

    `n_boot` and `seed` are accepted so every interval function is called alike; the
    order-statistic interval needs no resampling (see the module docstring).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    v = _finite(values)
    n = len(v)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, "order statistic")
    value = float(np.quantile(v, q))
    lo_rank, hi_rank = order_statistic_ranks(n, q, conf)
    ranks = [r - 1 for r in (lo_rank, hi_rank) if 1 <= r <= n]
    part = np.partition(v, ranks) if ranks else v
    lo = float(part[lo_rank - 1]) if lo_rank >= 1 else float("-inf")
    hi = float(part[hi_rank - 1]) if hi_rank <= n else float("inf")
    return Estimate(value, min(lo, value), max(hi, value), n, "order statistic")


def slo_compliance(values: np.ndarray, threshold: float, conf: float = 0.95) -> Estimate:
    """Share of (finite) values <= threshold, with a Wilson interval."""
    v = _finite(values)
    n = len(v)
    if n == 0:
        return Estimate(float("nan"), 0.0, 1.0, 0, "wilson")
    k = int(np.sum(v <= threshold))
    lo, hi = wilson_interval(k, n, conf)
    return Estimate(k / n, lo, hi, n, "wilson")
