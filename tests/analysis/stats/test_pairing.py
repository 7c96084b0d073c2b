"""Paired comparison: McNemar mid-p against scipy, the cluster-robust SE against a sandwich
computed here, and the bootstrap interval by simulated coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest, chi2, norm

from analysis.stats.pairing import clustered_mcnemar, mcnemar_midp, paired_compare
from analysis.stats.power import mde_paired, n_for_paired


@pytest.mark.parametrize(("b", "c"), [(3, 12), (12, 3), (0, 7), (25, 40), (1, 1), (10, 0)])
def test_midp_is_the_exact_p_minus_the_observed_probability(b: int, c: int) -> None:
    n = b + c
    exact = binomtest(b, n, 0.5).pvalue
    ref = 1.0 if b == c else exact - binom.pmf(min(b, c), n, 0.5)
    assert mcnemar_midp(b, c) == pytest.approx(ref, rel=1e-12)
    assert mcnemar_midp(b, c) <= exact


def test_midp_without_discordant_pairs_is_one() -> None:
    assert mcnemar_midp(0, 0) == 1.0
    assert mcnemar_midp(5, 5) == pytest.approx(1.0)


def _pairs(n: int, probs: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired correctness with cell probabilities (both right, cand only, prod only, neither)."""
    cell = np.random.default_rng(seed).choice(4, size=n, p=probs)
    return np.isin(cell, [0, 1]).astype(float), np.isin(cell, [0, 2]).astype(float)


def test_counts_difference_and_simple_test() -> None:
    cand = np.array([1, 1, 1, 0, 0, 1, 0, 1], dtype=float)
    prod = np.array([1, 0, 0, 0, 1, 0, 0, 1], dtype=float)
    pc = paired_compare(cand, prod)
    assert (pc.b, pc.c, pc.n) == (3, 1, 8)
    assert pc.diff.value == pytest.approx(2 / 8)
    assert pc.p_value == mcnemar_midp(3, 1) and pc.p_method == "mcnemar-midp"
    assert pc.se_cluster is None and pc.design_effect == 1.0
    assert pc.mde == pytest.approx(mde_paired(8, 4 / 8))


def test_same_seed_same_result_other_seed_other_interval() -> None:
    cand, prod = _pairs(300, [0.6, 0.15, 0.1, 0.15], seed=1)
    a = paired_compare(cand, prod, seed=5)
    assert a == paired_compare(cand, prod, seed=5)
    assert (a.diff.lo, a.diff.hi) != (
        paired_compare(cand, prod, seed=6).diff.lo,
        paired_compare(cand, prod, seed=6).diff.hi,
    )


def test_labels_needed_only_when_not_significant() -> None:
    cand, prod = _pairs(200, [0.6, 0.11, 0.11, 0.18], seed=2)
    pc = paired_compare(cand, prod)
    assert pc.p_value > 0.05 and pc.diff.lo < 0 < pc.diff.hi
    psi = (pc.b + pc.c) / pc.n
    assert pc.n_needed == n_for_paired(pc.diff.value, psi)
    assert pc.n_needed > pc.n
    big, small = _pairs(400, [0.6, 0.25, 0.05, 0.1], seed=3)
    sig = paired_compare(big, small)
    assert sig.p_value < 0.001 and sig.diff.lo > 0 and sig.n_needed is None


def sandwich_se(d: np.ndarray, w: np.ndarray, g: np.ndarray) -> float:
    """CR1 cluster-robust SE of a weighted regression of d on an intercept, in matrix form."""
    x = np.ones((len(d), 1))
    bread = np.linalg.inv(x.T @ (w[:, None] * x))
    beta = bread @ (x.T @ (w * d))
    u = d - x @ beta
    meat = np.zeros((1, 1))
    groups = np.unique(g)
    for label in groups:
        m = g == label
        score = x[m].T @ (w[m] * u[m])
        meat += np.outer(score, score)
    v = len(groups) / (len(groups) - 1) * bread @ meat @ bread
    return float(np.sqrt(v[0, 0]))


@pytest.mark.parametrize("weighted", [False, True])
def test_cluster_robust_se_matches_the_sandwich(weighted: bool) -> None:
    rng = np.random.default_rng(4)
    g = rng.integers(0, 40, size=250)
    cand, prod = _pairs(250, [0.55, 0.2, 0.1, 0.15], seed=4)
    w = rng.choice([1.0, 2.5, 10.0], size=250) if weighted else np.ones(250)
    pc = paired_compare(cand, prod, weights=w if weighted else None, clusters=g)
    assert pc.se_cluster == pytest.approx(sandwich_se(cand - prod, w, g), rel=1e-10)


def test_clustered_mcnemar_reduces_to_mcnemars_chi_square() -> None:
    cand, prod = _pairs(300, [0.6, 0.15, 0.1, 0.15], seed=8)
    pc = paired_compare(cand, prod, clusters=np.arange(300))
    expected = chi2.sf((pc.b - pc.c) ** 2 / (pc.b + pc.c), 1)
    assert pc.p_value == pytest.approx(expected, rel=1e-10)
    assert pc.p_method.startswith("mcnemar score test")
    assert clustered_mcnemar(np.zeros(5)) == 1.0


def test_rejects_mismatched_or_missing_data() -> None:
    with pytest.raises(ValueError):
        paired_compare(np.ones(3), np.ones(4))
    with pytest.raises(ValueError):
        paired_compare(np.array([1.0, np.nan]), np.ones(2))


def iid_coverage(n: int, reps: int = 1000, seed: int = 11) -> float:
    """Coverage of the paired bootstrap interval for independent items.

    Cells (both right, candidate only, production only, neither) = (.65, .12, .07, .16):
    the true difference is 0.05.
    """
    probs = [0.65, 0.12, 0.07, 0.16]
    truth = probs[1] - probs[2]
    rng = np.random.default_rng(seed + n)
    cells = rng.choice(4, size=(reps, n), p=probs)
    hits = []
    for r in range(reps):
        cand = np.isin(cells[r], [0, 1]).astype(float)
        prod = np.isin(cells[r], [0, 2]).astype(float)
        d = paired_compare(cand, prod, n_boot=1000, seed=r).diff
        hits.append(d.lo <= truth <= d.hi)
    return float(np.mean(hits))


def clustered_coverage(n: int, reps: int = 1000, seed: int = 3, use_clusters: bool = True) -> float:
    """Coverage with sessions of 1-7 requests whose correctness is correlated.

    Session effects u (shared by both models) and v (candidate only) are N(0, 1);
    correctness is 1{a + u (+ v) + e > 0}, so the true accuracies are
    Phi(a / sqrt(1 + var)), and the truth is their difference.
    """
    a_cand, a_prod = 0.9, 0.7
    truth = norm.cdf(a_cand / math.sqrt(3.0)) - norm.cdf(a_prod / math.sqrt(2.0))
    rng = np.random.default_rng(seed + n)
    hits = []
    for r in range(reps):
        sizes = rng.integers(1, 8, size=n // 2)
        sizes = sizes[np.cumsum(sizes) <= n]
        g = np.repeat(np.arange(len(sizes)), sizes)
        u = rng.normal(size=len(sizes))[g]
        v = rng.normal(size=len(sizes))[g]
        cand = (a_cand + u + v + rng.normal(size=len(g)) > 0).astype(float)
        prod = (a_prod + u + rng.normal(size=len(g)) > 0).astype(float)
        d = paired_compare(
            cand, prod, clusters=g if use_clusters else None, n_boot=1000, seed=r
        ).diff
        hits.append(d.lo <= truth <= d.hi)
    return float(np.mean(hits))


@pytest.mark.parametrize("n", [200, 500])
def test_paired_bootstrap_covers_95_percent(n: int) -> None:
    """1,000 replications: Monte-Carlo SE 0.7 points; accept 93-97%."""
    assert 0.93 <= iid_coverage(n) <= 0.97


@pytest.mark.parametrize("n", [200, 500])
def test_cluster_bootstrap_covers_95_percent_with_correlated_sessions(n: int) -> None:
    """1,000 replications: Monte-Carlo SE 0.7 points; accept 93-97%."""
    assert 0.93 <= clustered_coverage(n) <= 0.97


def test_ignoring_sessions_would_undercover() -> None:
    """The same data resampled item by item: the interval is too narrow."""
    assert clustered_coverage(500, reps=400, use_clusters=False) < 0.9
