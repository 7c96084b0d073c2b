"""Sample sizes and minimum detectable effects for a paired comparison of two accuracies.

Uses Connor's (1987) sample-size formula for McNemar's test: with psi the probability
that the two models disagree on correctness (discordant pairs) and delta the difference
in accuracy,

    n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2.

The minimum detectable effect inverts it for delta in closed form.
"""

from __future__ import annotations

import math

from scipy.special import ndtri


def _z(alpha: float, power: float) -> tuple[float, float]:
    """Two-sided critical value and power quantile."""
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError("alpha and power must lie in (0, 1)")
    return float(ndtri(1.0 - alpha / 2.0)), float(ndtri(power))


def mde_from_n(n: float, p_discordant: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """mde_paired for a possibly non-integer (effective) n."""
    if n <= 0:
        return float("inf")
    psi = p_discordant
    if not 0.0 < psi <= 1.0:
        raise ValueError(f"p_discordant must lie in (0, 1], got {psi}")
    za, zb = _z(alpha, power)
    # (n + zb^2) d^2 - 2 sqrt(n) za sqrt(psi) d + (za^2 - zb^2) psi = 0, larger root.
    a = n + zb * zb
    b = -2.0 * math.sqrt(n) * za * math.sqrt(psi)
    c = (za * za - zb * zb) * psi
    disc = max(b * b - 4.0 * a * c, 0.0)
    return (-b + math.sqrt(disc)) / (2.0 * a)


def mde_paired(n: int, p_discordant: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy difference a paired test on n items detects with the given power."""
    return mde_from_n(float(n), p_discordant, alpha, power)


def n_for_paired(diff: float, p_discordant: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Paired items needed for McNemar's test to detect `diff` with the given power (Connor 1987)."""
    delta = abs(diff)
    psi = p_discordant
    if delta == 0.0:
        raise ValueError("a zero difference cannot be detected at any sample size")
    if not delta <= psi <= 1.0:
        raise ValueError(f"need |diff| <= p_discordant <= 1, got {diff} and {psi}")
    za, zb = _z(alpha, power)
    n = (za * math.sqrt(psi) + zb * math.sqrt(max(psi - delta * delta, 0.0))) ** 2 / delta**2
    return math.ceil(n - 1e-9)
