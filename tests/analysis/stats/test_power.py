"""Paired sample sizes and minimum detectable effects: Connor's formula and simulated power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from analysis.stats.power import mde_from_n, mde_paired, n_for_paired


def connor(delta: float, psi: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Connor (1987), written out independently of the module."""
    za, zb = norm.ppf(1 - alpha / 2), norm.ppf(power)
    return (za * math.sqrt(psi) + zb * math.sqrt(psi - delta**2)) ** 2 / delta**2


@pytest.mark.parametrize(("delta", "psi"), [(0.05, 0.2), (0.1, 0.3), (0.02, 0.1), (0.2, 0.25)])
def test_n_for_paired_is_connors_formula(delta: float, psi: float) -> None:
    assert n_for_paired(delta, psi) == math.ceil(connor(delta, psi))
    assert n_for_paired(-delta, psi) == n_for_paired(delta, psi)


def test_a_worked_value() -> None:
    # delta 5 points, 20% discordant: (1.96 * 0.4472 + 0.8416 * 0.4444)^2 / 0.0025 = 625.5.
    assert n_for_paired(0.05, 0.2) == 626


@pytest.mark.parametrize("n", [50, 200, 1000, 10_000])
@pytest.mark.parametrize("psi", [0.1, 0.3])
def test_mde_inverts_the_sample_size(n: int, psi: float) -> None:
    d = mde_paired(n, psi)
    assert connor(d, psi) == pytest.approx(n, rel=1e-9)
    assert mde_from_n(float(n), psi) == d
    assert mde_paired(4 * n, psi) < d


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        n_for_paired(0.0, 0.2)
    with pytest.raises(ValueError):
        n_for_paired(0.3, 0.2)  # a difference larger than the discordance is impossible
    assert mde_from_n(0.0, 0.2) == math.inf


def midp_power(n: int, p10: float, p01: float, reps: int, seed: int) -> float:
    """Simulated power of the two-sided McNemar mid-p test at 5% (mid-p computed here)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [p10, p01, 1 - p10 - p01], size=reps)
    b, c = counts[:, 0], counts[:, 1]
    k, m = np.minimum(b, c), b + c
    midp = np.minimum(1.0, 2 * binom.cdf(k, m, 0.5) - binom.pmf(k, m, 0.5))
    return float(np.mean(midp < 0.05))


@pytest.mark.parametrize(("delta", "psi"), [(0.05, 0.2), (0.08, 0.3), (0.1, 0.15)])
def test_n_for_paired_gives_80_percent_power_in_simulation(delta: float, psi: float) -> None:
    """4,000 replications: Monte-Carlo SE 0.6 points; accept 77-84%."""
    n = n_for_paired(delta, psi)
    power = midp_power(n, (psi + delta) / 2, (psi - delta) / 2, 4000, seed=n)
    assert 0.77 <= power <= 0.84
