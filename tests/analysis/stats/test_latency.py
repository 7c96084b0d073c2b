"""Latency quantiles (order-statistic intervals) and SLO compliance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, lognorm

from analysis.stats.latency import order_statistic_ranks, quantile, slo_compliance
from analysis.stats.proportions import wilson_interval


@pytest.mark.parametrize(("n", "q"), [(20, 0.5), (200, 0.5), (200, 0.95), (500, 0.99), (57, 0.9)])
def test_ranks_are_the_tightest_with_the_stated_coverage(n: int, q: float) -> None:
    lo, hi = order_statistic_ranks(n, q, 0.95)
    # P(x_(lo) > xi) = P(K < lo) <= 2.5%, and lo + 1 would break that; same for hi.
    assert binom.cdf(lo - 1, n, q) <= 0.025 < binom.cdf(lo, n, q)
    assert binom.sf(hi - 1, n, q) <= 0.025 < binom.sf(hi - 2, n, q)


def test_value_is_numpys_quantile_and_nan_is_ignored() -> None:
    v = np.array([5.0, 1.0, np.nan, 3.0, 2.0, 4.0, np.inf])
    e = quantile(v, 0.5)
    assert e.value == 3.0 and e.n == 5 and e.lo <= 3.0 <= e.hi


def test_p99_of_200_requests_has_no_finite_upper_bound() -> None:
    v = np.random.default_rng(0).lognormal(5, 1, 200)
    e = quantile(v, 0.99)
    assert math.isinf(e.hi) and e.lo < e.value


def quantile_coverage(n: int, q: float, reps: int = 2000, seed: int = 5) -> float:
    """Share of intervals covering the true quantile of a lognormal latency distribution."""
    dist = lognorm(s=0.8, scale=300.0)
    truth = dist.ppf(q)
    samples = dist.rvs(size=(reps, n), random_state=np.random.default_rng(seed + n))
    hits = [(e.lo <= truth <= e.hi) for e in (quantile(s, q) for s in samples)]
    return float(np.mean(hits))


@pytest.mark.parametrize("n", [200, 500])
@pytest.mark.parametrize("q", [0.5, 0.95])
def test_quantile_interval_covers_at_least_95_percent(n: int, q: float) -> None:
    """2,000 replications: SE 0.5 points. Exact intervals are conservative: accept 94-98.5%."""
    assert 0.94 <= quantile_coverage(n, q) <= 0.985


def test_slo_compliance_is_a_wilson_share() -> None:
    v = np.array([100, 250, 300, 900, 120, np.nan, 301], dtype=float)
    e = slo_compliance(v, 300)
    assert (e.value, e.n) == (4 / 6, 6)
    assert (e.lo, e.hi) == pytest.approx(wilson_interval(4, 6))
    assert slo_compliance(np.array([]), 300).n == 0
