"""Candidate against production on the same labelled items: difference, test, power.

- Difference: candidate minus production accuracy, design-weighted when sampling
  weights (1 / inclusion probability) are given, with a percentile bootstrap interval
  that resamples items, or whole sessions when clusters are given (Davison & Hinkley
  1997, ch. 3.8), so correlated requests of one session are not counted as independent;
  Hesterberg's (2015) expanded percentile interval corrects for few sessions.
- Test: McNemar's exact mid-p test (Fagerland, Lydersen & Laake 2013) on the
  discordant pairs. With clusters or weights McNemar's independence assumption fails,
  so the clustered McNemar score test (Durkalski et al. 2003) is used instead:
  (sum_g S_g)^2 / sum_g S_g^2 ~ chi2(1), S_g the (weighted) b - c of cluster g; with
  one item per cluster and unit weights it is McNemar's chi-square (b - c)^2 / (b + c).
- Cluster-robust SE: the sandwich (linearisation) SE of the ratio estimator with the
  G/(G-1) small-sample factor, as statsmodels' cluster covariance for a regression on
  an intercept.
- Power: Connor's (1987) formula (see power.py), with the sample size divided by the
  design effect (observed variance over the simple-random-sampling variance, at least 1)
  when the items are clustered or weighted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import bdtr
from scipy.stats import chi2

from analysis.stats.estimate import Estimate, z_value
from analysis.stats.power import mde_from_n, n_for_paired
from analysis.stats.resample import group_sums, percentile_interval, ratio_replicates, ratio_se


@dataclass(frozen=True)
class PairedComparison:
    """How a candidate's accuracy compares with production's on the items both answered."""

    diff: Estimate  # candidate minus production accuracy
    p_value: float  # two-sided; see p_method
    b: int  # candidate right, production wrong
    c: int  # candidate wrong, production right
    n: int
    se_cluster: float | None  # cluster-robust SE of diff (None without clusters)
    mde: float  # minimum detectable effect at 80% power for this n (and design effect)
    n_needed: int | None  # total labelled items to resolve the observed diff; None if significant
    p_method: str = "mcnemar-midp"
    design_effect: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "diff": self.diff.as_dict(),
            "p_value": float(self.p_value),
            "p_method": self.p_method,
            "b": int(self.b),
            "c": int(self.c),
            "n": int(self.n),
            "se_cluster": None if self.se_cluster is None else float(self.se_cluster),
            "mde": float(self.mde) if math.isfinite(self.mde) else None,
            "n_needed": self.n_needed,
            "design_effect": float(self.design_effect),
        }


def mcnemar_midp(b: int, c: int) -> float:
    """Two-sided McNemar mid-p: the exact binomial p-value minus the probability of the observed."""
    n = int(b) + int(c)
    if n == 0:
        return 1.0
    k = min(int(b), int(c))
    # 2 P(X <= k) - P(X = k) = P(X <= k) + P(X <= k - 1), X ~ Binomial(n, 1/2).
    p = float(bdtr(k, n, 0.5)) + (float(bdtr(k - 1, n, 0.5)) if k > 0 else 0.0)
    return min(max(p, 0.0), 1.0)


def clustered_mcnemar(unit_diffs: np.ndarray) -> float:
    """Durkalski's clustered McNemar p-value from per-cluster (weighted) b - c totals."""
    s = np.asarray(unit_diffs, dtype=float)
    denom = float(np.sum(s * s))
    if denom == 0.0:
        return 1.0
    return float(chi2.sf(float(s.sum()) ** 2 / denom, 1))


def paired_compare(
    candidate: np.ndarray,
    production: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    conf: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedComparison:
    """Compare paired 0/1 correctness; weights are sampling weights, clusters session ids."""
    cand = np.asarray(candidate, dtype=float)
    prod = np.asarray(production, dtype=float)
    if cand.shape != prod.shape or cand.ndim != 1 or len(cand) == 0:
        raise ValueError("candidate and production need the same, non-zero number of items")
    if np.any(np.isnan(cand) | np.isnan(prod)):
        raise ValueError("paired correctness must not contain NaN")
    n = len(cand)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != cand.shape or np.any(~(w > 0)):
        raise ValueError("weights must be positive, one per item")
    d = cand - prod
    diff = float(np.dot(w, d) / w.sum())
    b = int(np.sum((cand == 1) & (prod == 0)))
    c = int(np.sum((cand == 0) & (prod == 1)))
    unit_num, unit_den = group_sums(w * d, w, clusters)

    reps = ratio_replicates(unit_num, unit_den, n_boot=n_boot, seed=seed)
    se = ratio_se(unit_num, unit_den)
    kind = "cluster bootstrap" if clusters is not None else "paired bootstrap"
    if reps is not None:
        lo, hi = percentile_interval(reps, conf, units=len(unit_num))
    else:
        z = z_value(conf)
        lo, hi, kind = diff - z * se, diff + z * se, "normal (sandwich SE)"
    estimate = Estimate(diff, lo, hi, n, kind)

    simple = clusters is None and weights is None
    p_value = mcnemar_midp(b, c) if simple else clustered_mcnemar(unit_num)
    p_method = "mcnemar-midp" if simple else "mcnemar score test (clustered/weighted)"

    psi = float(np.dot(w, np.abs(d)) / w.sum())
    deff = 1.0
    if not simple and math.isfinite(se):
        var_srs = (psi - diff * diff) / n
        deff = max(1.0, se * se / var_srs) if var_srs > 0 else 1.0
    alpha = 1.0 - conf
    mde = mde_from_n(n / deff, max(psi, 1.0 / n), alpha)
    significant = p_value < alpha and (lo > 0 or hi < 0)
    n_needed = None
    if not significant and diff != 0.0:
        n_needed = math.ceil(n_for_paired(diff, max(psi, abs(diff)), alpha) * deff)
    return PairedComparison(
        diff=estimate,
        p_value=p_value,
        b=b,
        c=c,
        n=n,
        se_cluster=se if clusters is not None else None,
        mde=mde,
        n_needed=n_needed,
        p_method=p_method,
        design_effect=deff,
    )
