"""Cost per 1,000 requests and expected cost including errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm, t

from analysis.stats.cost import expected_cost, per_thousand


def test_per_thousand_is_the_mean_times_1000_with_a_sensible_interval() -> None:
    x = np.random.default_rng(1).gamma(2.0, 0.001, size=400)
    e = per_thousand(x, n_boot=4000, seed=2)
    assert e.value == pytest.approx(1000 * x.mean()) and e.method == "bootstrap"
    # The bootstrap interval agrees with the t interval to within its Monte-Carlo error.
    half = t.ppf(0.975, 399) * x.std(ddof=1) / np.sqrt(400) * 1000
    assert e.lo == pytest.approx(e.value - half, rel=0.02)
    assert e.hi == pytest.approx(e.value + half, rel=0.02)


def test_large_samples_use_the_normal_interval() -> None:
    x = np.random.default_rng(2).gamma(2.0, 0.001, size=200_000)
    e = per_thousand(x)
    half = norm.ppf(0.975) * x.std(ddof=1) / np.sqrt(len(x)) * 1000
    assert e.method.startswith("normal")
    assert (e.lo, e.hi) == pytest.approx((e.value - half, e.value + half), rel=1e-9)


def test_expected_cost_adds_error_costs_and_weights_like_hajek() -> None:
    call = np.array([0.002, 0.002, 0.004, 0.004])
    err = np.array([0.0, 0.1, 0.0, 0.0])
    w = np.array([1.0, 1.0, 3.0, 3.0])
    e = expected_cost(call, err, weights=w, n_boot=500)
    # (0.002 + 0.102 + 3 * 0.004 + 3 * 0.004) / 8 * 1000
    assert e.value == pytest.approx(0.128 / 8 * 1000)
    assert expected_cost(call, err).value == pytest.approx(np.mean(call + err) * 1000)


def test_differences_of_costs_may_be_negative() -> None:
    rng = np.random.default_rng(3)
    d = expected_cost(rng.normal(-0.001, 0.0005, 300), np.zeros(300), n_boot=500)
    assert d.hi < 0


def test_deterministic_for_a_seed() -> None:
    x = np.random.default_rng(4).gamma(2.0, 0.001, size=300)
    assert per_thousand(x, seed=9) == per_thousand(x, seed=9)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        expected_cost(np.ones(3), np.ones(2))
    with pytest.raises(ValueError):
        expected_cost(np.ones(2), np.ones(2), weights=np.array([1.0, 0.0]))
    assert per_thousand(np.array([np.nan])).n == 0


def test_per_thousand_covers_the_true_mean_of_skewed_costs() -> None:
    """Gamma(shape 2) costs, n = 200, 500 replications: SE 1 point; accept 92-97%."""
    rng = np.random.default_rng(6)
    truth = 2.0 * 0.001 * 1000
    hits = []
    for r, x in enumerate(rng.gamma(2.0, 0.001, size=(500, 200))):
        e = per_thousand(x, n_boot=1000, seed=r)
        hits.append(e.lo <= truth <= e.hi)
    assert 0.92 <= np.mean(hits) <= 0.97
