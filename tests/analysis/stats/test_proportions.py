"""Wilson, Clopper-Pearson and the weighted accuracy estimator, against scipy and by coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from analysis.stats.proportions import (
    accuracy,
    clopper_pearson,
    clopper_pearson_lower,
    clopper_pearson_lower_array,
    kish_n,
    wilson_interval,
)

CASES = [(0, 10), (1, 10), (7, 20), (20, 20), (93, 100), (3, 250), (412, 500)]


@pytest.mark.parametrize(("k", "n"), CASES)
@pytest.mark.parametrize("conf", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k: int, n: int, conf: float) -> None:
    ref = binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
    assert wilson_interval(k, n, conf) == pytest.approx((ref.low, ref.high), abs=1e-12)


@pytest.mark.parametrize(("k", "n"), CASES)
@pytest.mark.parametrize("conf", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy(k: int, n: int, conf: float) -> None:
    ref = binomtest(k, n).proportion_ci(confidence_level=conf, method="exact")
    assert clopper_pearson(k, n, conf) == pytest.approx((ref.low, ref.high), abs=1e-10)


@pytest.mark.parametrize(("k", "n"), CASES)
def test_one_sided_lower_bound_is_the_two_sided_bound_at_twice_the_error(k: int, n: int) -> None:
    # A one-sided 95% lower bound is the lower end of a two-sided 90% interval.
    ref = binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact").low
    assert clopper_pearson_lower(k, n, 0.95) == pytest.approx(ref, abs=1e-10)
    lows = clopper_pearson_lower_array(np.array([k, k]), np.array([n, n]), 0.95)
    assert lows == pytest.approx([ref, ref], abs=1e-10)


def test_wilson_accepts_effective_counts_and_empty_samples() -> None:
    lo, hi = wilson_interval(30.5, 40.7)
    lo2, hi2 = wilson_interval(30, 40)
    assert 0 < lo < hi < 1 and abs(lo - lo2) < 0.02 and abs(hi - hi2) < 0.02
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_unweighted_accuracy_is_wilson() -> None:
    correct = np.array([1, 1, 0, 1, 0, 1, 1, 1], dtype=float)
    e = accuracy(correct)
    assert (e.value, e.n, e.method) == (0.75, 8, "wilson")
    assert (e.lo, e.hi) == pytest.approx(wilson_interval(6, 8))


def test_weighted_accuracy_is_the_hajek_ratio() -> None:
    # Two strata: the first sampled at 1 in 10, the second (hard) at 1 in 2.
    correct = np.array([1, 1, 1, 0, 0, 1, 0, 0], dtype=float)
    pi = np.array([0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5])
    # Weighted: (3 * 10 + 1 * 2) / (4 * 10 + 4 * 2) = 32 / 48.
    e = accuracy(correct, pi)
    assert e.value == pytest.approx(32 / 48)
    assert e.n == 8 and e.lo < e.value < e.hi


def test_equal_weights_give_the_unweighted_interval() -> None:
    rng = np.random.default_rng(3)
    correct = (rng.random(300) < 0.8).astype(float)
    a = accuracy(correct)
    b = accuracy(correct, np.full(300, 0.25))
    assert (b.value, b.lo, b.hi) == pytest.approx((a.value, a.lo, a.hi), abs=1e-12)
    assert kish_n(np.full(300, 4.0)) == pytest.approx(300)


def test_weighted_accuracy_rejects_bad_probabilities() -> None:
    with pytest.raises(ValueError):
        accuracy(np.ones(3), np.array([0.5, 0.0, 0.2]))
    with pytest.raises(ValueError):
        accuracy(np.ones(3), np.array([0.5, 0.2]))


def wilson_coverage(n: int, reps: int = 2000, truth: float = 0.83) -> float:
    """Share of unweighted accuracy intervals covering the true accuracy."""
    rng = np.random.default_rng(100 + n)
    hits = []
    for s in rng.random((reps, n)) < truth:
        e = accuracy(s.astype(float))
        hits.append(e.lo <= truth <= e.hi)
    return float(np.mean(hits))


@pytest.mark.parametrize("n", [200, 500])
def test_wilson_accuracy_covers_95_percent(n: int) -> None:
    """2,000 replications: Monte-Carlo SE 0.5 points; accept 93-97%."""
    assert 0.93 <= wilson_coverage(n) <= 0.97


def weighted_coverage(
    n: int, allocation: tuple[float, ...], reps: int = 1000, kish: bool = False
) -> float:
    """Share of weighted accuracy intervals covering the population accuracy.

    A fixed population of 20,000 items in three strata (60/30/10%, accuracies 92/70/40%)
    is sampled by Poisson sampling, each stratum's expected share of the n items given
    by `allocation`. With kish=True the interval uses Kish's n_eff instead (for contrast).
    """
    rng = np.random.default_rng(7 + n)
    sizes = np.array([12_000, 6_000, 2_000])
    stratum = np.repeat(np.arange(3), sizes)
    y = (rng.random(len(stratum)) < np.array([0.92, 0.7, 0.4])[stratum]).astype(float)
    truth = y.mean()
    pi = (np.array(allocation) * n / sizes)[stratum]
    hits = []
    for mask in rng.random((reps, len(y))) < pi:
        e = accuracy(y[mask], pi[mask])
        lo, hi = e.lo, e.hi
        if kish:
            n_eff = kish_n(1.0 / pi[mask])
            lo, hi = wilson_interval(e.value * n_eff, n_eff)
        hits.append(lo <= truth <= hi)
    return float(np.mean(hits))


@pytest.mark.parametrize("n", [200, 500])
@pytest.mark.parametrize("allocation", [(0.2, 0.3, 0.5), (0.85, 0.1, 0.05)])
def test_weighted_accuracy_covers_95_percent(n: int, allocation: tuple[float, ...]) -> None:
    """Unequal inclusion probabilities; the truth is the population accuracy.

    One allocation oversamples the hard, rare stratum, the other the easy one.
    1,000 replications: Monte-Carlo SE 0.7 points; accept 93-97%.
    """
    assert 0.93 <= weighted_coverage(n, allocation) <= 0.97


def test_kish_alone_would_be_too_narrow_when_easy_items_are_oversampled() -> None:
    """Why the design-based n_eff: Kish's misses the 93% floor in this design."""
    assert weighted_coverage(500, (0.85, 0.1, 0.05), kish=True) < 0.93
