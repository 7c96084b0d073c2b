"""The bootstrap engine: both resampling paths agree, and the sandwich SE is the textbook one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm, t

from analysis.stats.resample import (
    group_sums,
    percentile_interval,
    ratio_replicates,
    ratio_se,
)


def test_multinomial_shortcut_and_index_matrices_give_the_same_distribution() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.7).astype(float)
    few = ratio_replicates(y, np.ones(300), n_boot=20_000, seed=1)  # 2 distinct units
    jitter = y + rng.normal(0, 1e-9, 300)  # all distinct: index matrices
    many = ratio_replicates(jitter, np.ones(300), n_boot=20_000, seed=1)
    assert few is not None and many is not None
    sd = np.sqrt(y.mean() * (1 - y.mean()) / 300)
    for reps in (few, many):
        assert reps.mean() == pytest.approx(y.mean(), abs=0.003)
        assert reps.std() == pytest.approx(sd, rel=0.03)


def test_too_large_for_resampling_returns_none() -> None:
    x = np.random.default_rng(1).random(300_000)
    assert ratio_replicates(x, np.ones(len(x)), n_boot=2000, seed=0) is None


def test_ratio_se_of_a_mean_is_s_over_root_n() -> None:
    x = np.random.default_rng(2).normal(size=500)
    assert ratio_se(x, np.ones(500)) == pytest.approx(x.std(ddof=1) / np.sqrt(500))


def test_group_sums() -> None:
    num, den = group_sums(np.array([1.0, 2, 3, 4]), np.ones(4), np.array(["b", "a", "b", "c"]))
    assert list(num) == [2.0, 4.0, 4.0] and list(den) == [1.0, 2.0, 1.0]


def test_expanded_percentile_interval_uses_t_with_m_minus_1_df() -> None:
    reps = norm.ppf(np.linspace(0.00001, 0.99999, 200_001))
    lo, hi = percentile_interval(reps, 0.95)
    assert (lo, hi) == pytest.approx((-1.96, 1.96), abs=1e-3)
    lo, hi = percentile_interval(reps, 0.95, units=10)
    expected = np.sqrt(10 / 9) * t.ppf(0.975, 9)
    assert (lo, hi) == pytest.approx((-expected, expected), abs=2e-3)
