"""Calibration: ECE on a hand-worked example, the debiased ECE against scipy's folded normal,
calibrated against overconfident models, and the ECE interval by simulated coverage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import foldnorm

from analysis.stats.calibration import (
    _bin_sums,
    bin_bounds,
    bootstrap_ece,
    brier,
    calibration,
    ece,
    ece_debiased,
    mce,
    reliability_bins,
)

# Hand-worked: sorted confidences 0.3 0.6 0.7 | 0.8 0.9 0.95 with correct 0 1 1 | 0 1 1.
CONF = np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.3])
CORRECT = np.array([1, 0, 1, 1, 1, 0], dtype=float)


def test_ece_mce_brier_on_a_hand_worked_example() -> None:
    # Bin 1: mean conf 1.6/3, accuracy 2/3, gap 0.1333; bin 2: 2.65/3 vs 2/3, gap 0.2167.
    assert ece(CONF, CORRECT, n_bins=2) == pytest.approx(0.5 * 0.4 / 3 + 0.5 * 0.65 / 3)
    assert ece(CONF, CORRECT, n_bins=2) == pytest.approx(0.175)
    assert mce(CONF, CORRECT, n_bins=2) == pytest.approx(0.65 / 3)
    # (0.01 + 0.64 + 0.09 + 0.16 + 0.0025 + 0.09) / 6
    assert brier(CONF, CORRECT) == pytest.approx(0.9925 / 6)


def test_reliability_bins_on_the_hand_worked_example() -> None:
    bins = reliability_bins(CONF, CORRECT, n_bins=2)
    assert [(b.lo, b.hi, b.n) for b in bins] == [(0.3, 0.7, 3), (0.8, 0.95, 3)]
    assert [b.mean_conf for b in bins] == pytest.approx([1.6 / 3, 2.65 / 3])
    assert [b.accuracy for b in bins] == pytest.approx([2 / 3, 2 / 3])


def test_debiased_ece_uses_the_folded_normal_mean() -> None:
    expected = 0.0
    for gap in (2 / 3 - 1.6 / 3, 2 / 3 - 2.65 / 3):
        s = np.sqrt((2 / 3) * (1 / 3) / 3)
        folded = foldnorm(abs(gap) / s, scale=s).mean()
        expected += 0.5 * (2 * abs(gap) - folded)
    assert ece_debiased(CONF, CORRECT, n_bins=2) == pytest.approx(max(expected, 0.0))
    assert ece_debiased(CONF, CORRECT, n_bins=2) < ece(CONF, CORRECT, n_bins=2)


def test_equal_mass_bins_split_like_array_split() -> None:
    assert list(bin_bounds(7, 3)) == [0, 3, 5, 7]
    assert list(bin_bounds(4, 10)) == [0, 1, 2, 3, 4]
    assert [b.n for b in reliability_bins(np.linspace(0, 1, 23), np.ones(23), 5)] == [5, 5, 5, 4, 4]


def test_resampled_bin_sums_equal_sorting_each_resample() -> None:
    """The cumulative-count shortcut against explicitly sorting every resample, with ties."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        cs = np.sort(np.round(rng.random(n), 1))
        ys = (rng.random(n) < cs).astype(float)
        bounds = bin_bounds(n, k)
        idx = np.sort(rng.integers(0, n, size=(4, n)), axis=1)
        counts = np.stack([np.bincount(row, minlength=n) for row in idx])
        sum_c, sum_y = _bin_sums(cs, ys, counts, bounds)
        for r in range(4):
            expect_c = [cs[idx[r]][a:b].sum() for a, b in itertools.pairwise(bounds)]
            expect_y = [ys[idx[r]][a:b].sum() for a, b in itertools.pairwise(bounds)]
            assert sum_c[r] == pytest.approx(expect_c)
            assert sum_y[r] == pytest.approx(expect_y)


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    c, y = model("over", 300, np.random.default_rng(1))
    a, b = bootstrap_ece(c, y, n_boot=50, seed=3), bootstrap_ece(c, y, n_boot=50, seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert calibration(c, y, n_boot=100, seed=3) == calibration(c, y, n_boot=100, seed=3)


def model(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Confidences on [0.5, 1] (density 8(c - 0.5)); P(correct | c) = c, or 0.5 + 0.75 (c - 0.5).

    The overconfident model's true calibration error is E[0.25 (C - 0.5)] = 1/12; its
    miscalibration has one sign everywhere, so the population ECE with any binning is
    1/12 as well: that is the truth its ECE intervals should cover.
    """
    c = 0.5 + 0.5 * np.sqrt(rng.random(n))
    p = c if kind == "calibrated" else 0.5 + 0.75 * (c - 0.5)
    return c, (rng.random(n) < p).astype(float)


TRUE_ECE = {"calibrated": 0.0, "over": 1.0 / 12.0}


def test_calibrated_model_has_debiased_ece_near_zero() -> None:
    c, y = model("calibrated", 2000, np.random.default_rng(2))
    cal = calibration(c, y, n_boot=300)
    assert cal.ece_debiased < 0.01 and cal.ece_debiased < cal.ece_plugin
    assert cal.ece.lo == 0.0 and cal.p_calibrated > 0.05


def test_overconfident_model_has_clearly_positive_ece() -> None:
    c, y = model("over", 2000, np.random.default_rng(2))
    cal = calibration(c, y, n_boot=300)
    assert cal.ece.value == pytest.approx(1 / 12, abs=0.025)
    assert cal.ece.lo > 0.05 and cal.p_calibrated < 0.01
    assert cal.ece.lo <= cal.ece.value <= cal.ece.hi
    assert len(cal.bins) == 10 and sum(b.n for b in cal.bins) == 2000


def ece_coverage(kind: str, n: int, reps: int = 600, seed: int = 21) -> tuple[float, float]:
    """Coverage of the reported ECE interval, and of the naive plug-in percentile interval."""
    rng = np.random.default_rng(seed + n)
    truth = TRUE_ECE[kind]
    hits, naive = [], []
    for r in range(reps):
        c, y = model(kind, n, rng)
        e = calibration(c, y, n_boot=400, seed=r).ece
        hits.append(e.lo <= truth <= e.hi)
        if kind == "over" and r < 200:
            plugin, _ = bootstrap_ece(c, y, n_boot=400, seed=r)
            lo, hi = np.quantile(plugin, [0.025, 0.975])
            naive.append(lo <= truth <= hi)
    return float(np.mean(hits)), float(np.mean(naive)) if naive else float("nan")


@pytest.mark.parametrize("n", [200, 500])
def test_ece_interval_covers_the_true_ece_of_an_overconfident_model(n: int) -> None:
    """600 replications: Monte-Carlo SE 0.9 points; accept 93-97%.

    The plug-in ECE's percentile interval sits above the truth (checked on 200 of them):
    badly at n = 200 (about 64% coverage), less so at 500 (about 90%).
    """
    covered, naive = ece_coverage("over", n)
    assert 0.93 <= covered <= 0.97
    if n == 200:
        assert naive < 0.8


@pytest.mark.parametrize("n", [200, 500])
def test_ece_interval_covers_zero_for_a_calibrated_model(n: int) -> None:
    """400 replications: Monte-Carlo SE 1.1 points; accept 92-98%."""
    covered, _ = ece_coverage("calibrated", n, reps=400)
    assert 0.92 <= covered <= 0.98
