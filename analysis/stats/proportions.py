"""Intervals for proportions (accuracy, compliance shares) and the weighted accuracy estimator.

References: Wilson (1927) score interval; Clopper & Pearson (1934) exact interval;
Hajek (1971) ratio estimator for unequal inclusion probabilities; Kish (1965) effective
sample size; Korn & Graubard (1998) for carrying a design effect into a binomial interval.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta

from analysis.stats.estimate import Estimate, z_value


def wilson_interval(k: float, n: float, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; k and n may be effective (non-integer)."""
    if n <= 0:
        return 0.0, 1.0
    z = z_value(conf)
    p = min(max(k / n, 0.0), 1.0)
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    lo = 0.0 if p == 0.0 else max(0.0, centre - half)
    hi = 1.0 if p == 1.0 else min(1.0, centre + half)
    return lo, hi


def clopper_pearson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson exact two-sided interval for k successes in n trials."""
    if n <= 0:
        return 0.0, 1.0
    alpha = 1.0 - conf
    lo = 0.0 if k <= 0 else float(beta.ppf(alpha / 2.0, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return lo, hi


def clopper_pearson_lower(k: int, n: int, conf: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound: the true proportion is >= it with probability conf."""
    return float(clopper_pearson_lower_array(np.asarray([k]), np.asarray([n]), conf)[0])


def clopper_pearson_lower_array(k: np.ndarray, n: np.ndarray, conf: float = 0.95) -> np.ndarray:
    """Vectorised one-sided Clopper-Pearson lower bounds (0 where k = 0 or n = 0)."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    ok = (k > 0) & (n > 0)
    out = np.zeros(np.broadcast(k, n).shape)
    kk, nn = np.broadcast_arrays(k, n)
    out[ok] = beta.ppf(1.0 - conf, kk[ok], nn[ok] - kk[ok] + 1.0)
    return out


def accuracy(
    correct: np.ndarray, inclusion_prob: np.ndarray | None = None, conf: float = 0.95
) -> Estimate:
    """Share correct with an interval; with inclusion probabilities, the design-weighted share.

    Unweighted: the sample share with a Wilson interval. Weighted: the Hajek ratio
    estimator sum(y/pi) / sum(1/pi), with a Wilson interval on an effective sample size
    n_eff = p(1-p) / v, where v is the linearisation (sandwich) variance of the ratio
    estimator. When accuracy is unrelated to the weights, n_eff equals Kish's
    (sum w)^2 / sum w^2; when it is related (oversampled hard strata), the sandwich
    keeps the interval honest where Kish's formula would not. If p is 0 or 1 the
    variance is 0 and Kish's n_eff is used.
    """
    y = np.asarray(correct, dtype=float)
    n = len(y)
    if n == 0:
        return Estimate(float("nan"), 0.0, 1.0, 0, "wilson")
    if inclusion_prob is None:
        k = float(y.sum())
        lo, hi = wilson_interval(k, n, conf)
        return Estimate(k / n, lo, hi, n, "wilson")
    pi = np.asarray(inclusion_prob, dtype=float)
    if pi.shape != y.shape:
        raise ValueError("inclusion_prob must have one value per item")
    if np.any(~(pi > 0) | (pi > 1)):
        raise ValueError("inclusion probabilities must lie in (0, 1]")
    w = 1.0 / pi
    total = w.sum()
    p = float(np.dot(w, y) / total)
    n_eff = effective_n(y, w, p)
    lo, hi = wilson_interval(p * n_eff, n_eff, conf)
    return Estimate(p, lo, hi, n, "hajek-wilson")


def kish_n(w: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2."""
    return float(w.sum() ** 2 / np.sum(w * w))


def effective_n(y: np.ndarray, w: np.ndarray, p: float) -> float:
    """The n at which a simple random sample would estimate p as precisely as this design does."""
    n = len(y)
    if n < 2 or p <= 0.0 or p >= 1.0:
        return kish_n(w)
    resid = w * (y - p)
    var = float(np.sum(resid * resid)) / float(w.sum()) ** 2
    return p * (1.0 - p) / var if var > 0 else kish_n(w)
