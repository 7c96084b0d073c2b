"""Recalibration: fits solve their score equations, scoring is strictly out of fold, and
cross-validated recalibration helps an overconfident model without hurting a calibrated one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit

from analysis.stats.calibration import ece_debiased
from analysis.stats.recalibration import (
    fit_platt,
    fit_temperature,
    fold_ids,
    logit,
    recalibrate_cv,
)


def model(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences on [0.5, 1]; calibrated, or overconfident (accuracy 0.5 + 0.5 (c - 0.5))."""
    rng = np.random.default_rng(seed)
    c = 0.5 + 0.5 * np.sqrt(rng.random(n))
    p = c if kind == "calibrated" else 0.5 + 0.5 * (c - 0.5)
    return c, (rng.random(n) < p).astype(float)


def test_temperature_solves_its_score_equation() -> None:
    c, y = model("over", 800, 1)
    x = logit(c)
    # d/da of the log loss of sigmoid(a x) is sum((sigmoid(a x) - y) x) = 0 at the optimum.
    a_ref = brentq(lambda a: float(np.dot(expit(a * x) - y, x)), 1e-3, 50.0)
    assert fit_temperature(x, y) == pytest.approx(1.0 / a_ref, rel=1e-4)


def test_platt_solves_its_score_equations_with_smoothed_targets() -> None:
    c, y = model("over", 800, 2)
    x = logit(c)
    a, b = fit_platt(x, y)
    pos, neg = y.sum(), len(y) - y.sum()
    t = np.where(y > 0.5, (pos + 1) / (pos + 2), 1 / (neg + 2))
    r = expit(a * x + b) - t
    assert abs(r.sum()) < 1e-3 * len(y) and abs(np.dot(r, x)) < 1e-3 * len(y)
    assert 0 < a < 1  # an overconfident model's logits are shrunk


def test_fits_stay_finite_when_every_item_is_right_or_wrong() -> None:
    x = logit(np.linspace(0.6, 0.99, 50))
    for y in (np.ones(50), np.zeros(50)):
        a, b = fit_platt(x, y)
        assert np.isfinite(a) and np.isfinite(b)
        assert 0 < fit_temperature(x, y) < np.inf


def test_every_item_is_scored_by_a_map_fitted_without_it() -> None:
    """Flipping one item's label cannot change its own out-of-fold confidence."""
    c, y = model("over", 200, 3)
    base = recalibrate_cv(c, y, "platt", seed=4)
    ids = fold_ids(200, 5, 4)
    for i in (0, 17, 123):
        flipped = y.copy()
        flipped[i] = 1 - flipped[i]
        other = recalibrate_cv(c, flipped, "platt", seed=4)
        assert other.conf[i] == base.conf[i]
        same_fold = ids == ids[i]
        # ...while the items of the other folds were scored by maps that saw the change.
        assert not np.allclose(other.conf[~same_fold], base.conf[~same_fold])
        assert np.array_equal(other.conf[same_fold], base.conf[same_fold])


def test_folds_are_balanced_and_seeded() -> None:
    ids = fold_ids(103, 5, 0)
    assert sorted(np.bincount(ids)) == [20, 20, 21, 21, 21]
    assert np.array_equal(ids, fold_ids(103, 5, 0))


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_cross_validated_recalibration_fixes_an_overconfident_model(method: str) -> None:
    for seed in range(3):
        c, y = model("over", 1000, 10 + seed)
        r = recalibrate_cv(c, y, method, seed=seed)
        raw = ece_debiased(c, y)
        assert raw > 0.08
        assert r.ece < raw / 2
        assert r.brier < np.mean((c - y) ** 2)


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_cross_validated_recalibration_barely_moves_a_calibrated_model(method: str) -> None:
    for seed in range(3):
        c, y = model("calibrated", 1000, 20 + seed)
        r = recalibrate_cv(c, y, method, seed=seed)
        assert r.ece <= ece_debiased(c, y) + 0.02
        assert r.brier <= np.mean((c - y) ** 2) + 0.005


def test_rejects_unknown_methods_and_tiny_samples() -> None:
    with pytest.raises(ValueError):
        recalibrate_cv(np.ones(10) * 0.7, np.ones(10), "isotonic")
    with pytest.raises(ValueError):
        recalibrate_cv(np.array([0.7]), np.array([1.0]))
