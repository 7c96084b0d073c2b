"""Confidence thresholds for a target precision: brute force, bounds, and fresh-data guarantee."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from analysis.stats.thresholds import risk_coverage, start_size, threshold_for_precision


@functools.cache
def cp_lower(k: int, n: int, conf: float) -> float:
    """One-sided Clopper-Pearson lower bound from scipy (two-sided at 2 conf - 1)."""
    if k == 0:
        return 0.0
    return float(binomtest(k, n).proportion_ci(confidence_level=2 * conf - 1, method="exact").low)


def brute_force(conf: np.ndarray, correct: np.ndarray, target: float, level: float, procedure: str):
    """Every distinct threshold tried with plain loops; returns (threshold, n_kept) or None."""
    thresholds = sorted(set(conf.tolist()), reverse=True)
    passing = []
    for t in thresholds:
        kept = conf >= t
        n, k = int(kept.sum()), int(correct[kept].sum())
        passing.append((t, n, cp_lower(k, n, level) >= target))
    if procedure == "lowest":
        ok = [(t, n) for t, n, p in passing if p]
        return ok[-1] if ok else None
    p0 = 1 - (1 - target) / 5
    n0 = next(
        m for m in range(1, 100_000) if cp_lower(math.floor(p0 * m + 1e-9), m, level) >= target
    )
    best = None
    for t, n, p in passing:
        if n < n0:
            continue
        if not p:
            break
        best = (t, n)
    return best


@pytest.mark.parametrize("procedure", ["fixed_sequence", "lowest"])
def test_matches_brute_force_on_small_inputs(procedure: str) -> None:
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(30):
        n = int(rng.integers(5, 130))
        conf = np.round(rng.random(n) * 0.5 + 0.5, 2)  # ties on purpose
        correct = (rng.random(n) < conf + 0.1).astype(float)
        target = float(rng.choice([0.7, 0.8, 0.9]))
        res = threshold_for_precision(conf, correct, target, 0.95, procedure=procedure)
        ref = brute_force(conf, correct, target, 0.95, procedure)
        got = None if res.threshold is None else (res.threshold, res.n_kept)
        assert got == ref
        if res.threshold is not None:
            found += 1
            kept = conf >= res.threshold
            assert res.n_kept == kept.sum() and res.coverage == pytest.approx(kept.mean())
            assert res.precision == pytest.approx(correct[kept].mean())
            assert res.precision_lower == pytest.approx(
                cp_lower(int(correct[kept].sum()), int(kept.sum()), 0.95)
            )
            assert res.precision_lower is not None and res.precision_lower >= target
    assert found > 5  # the comparison is not vacuous


def test_start_size_is_where_a_near_perfect_set_first_passes() -> None:
    # A 99%-precise set needs 93 items (92 right) for a 95% lower bound >= 0.95;
    # a perfect one 59 (0.95^59 < 0.05 <= 0.95^58).
    assert start_size(0.95, 0.95, 0.99) == 93
    assert start_size(0.95, 0.95, 1.0) == 59
    assert 0.95**59 < 0.05 <= 0.95**58


def test_no_threshold_when_the_target_is_out_of_reach() -> None:
    rng = np.random.default_rng(1)
    conf = rng.random(500)
    res = threshold_for_precision(conf, (rng.random(500) < 0.6).astype(float), 0.95)
    assert res.threshold is None and res.coverage == 0.0 and res.n_kept == 0 and res.n == 500
    assert threshold_for_precision(conf[:30], np.ones(30), 0.95).threshold is None  # too few


def test_a_perfect_model_keeps_everything() -> None:
    conf = np.linspace(0.5, 1.0, 400)
    res = threshold_for_precision(conf, np.ones(400), 0.95)
    assert res.threshold == 0.5 and res.coverage == 1.0


def precision_above(t: float) -> float:
    """True precision above t for confidences with density 8(c - 0.5) on [0.5, 1], P(right | c) = c."""
    t = min(max(t, 0.5), 1.0)

    def f(c: float) -> float:
        return 8 * (c**3 / 3 - c**2 / 4)

    return (f(1.0) - f(t)) / (1 - 4 * (t - 0.5) ** 2)


@pytest.mark.parametrize("n", [1000, 3000])
def test_fresh_data_meet_the_target_in_at_least_95_percent_of_runs(n: int) -> None:
    """500 runs; in each, the threshold's true precision (what any amount of fresh data
    from the same model would show) is checked. A run that finds no threshold makes no
    claim and so cannot break it. SE of the failure rate ~1 point; require >= 95%."""
    rng = np.random.default_rng(40 + n)
    ok, claims = [], 0
    for _ in range(500):
        c = 0.5 + 0.5 * np.sqrt(rng.random(n))
        y = (rng.random(n) < c).astype(float)
        res = threshold_for_precision(c, y, 0.95, 0.95)
        if res.threshold is None:
            ok.append(True)
            continue
        claims += 1
        assert res.precision_lower is not None and res.precision_lower >= 0.95
        ok.append(precision_above(res.threshold) >= 0.95)
    assert np.mean(ok) >= 0.95
    assert claims > 250  # the guarantee is not met by never answering


def test_risk_coverage_against_brute_force() -> None:
    conf = np.array([0.9, 0.8, 0.8, 0.6, 0.95, 0.3])
    correct = np.array([1, 0, 1, 1, 1, 0], dtype=float)
    coverage, risk = risk_coverage(conf, correct)
    expect = [
        (np.mean(conf >= t), 1 - correct[conf >= t].mean()) for t in (0.95, 0.9, 0.8, 0.6, 0.3)
    ]
    assert coverage == pytest.approx([c for c, _ in expect])
    assert risk == pytest.approx([r for _, r in expect])
