"""Vectorised bootstrap machinery shared by every resampled figure (ratios, differences, costs).

A ratio estimator sum(num) / sum(den) covers plain means (den = 1), weighted means
(num = w * y, den = w) and cluster-level resampling (num and den summed per cluster).
Resamples are drawn as whole matrices, never one Python loop per resample:

- when the resampling units take few distinct (num, den) values (0/1 correctness,
  discordant pairs, a handful of sampling weights), a bootstrap resample is exactly a
  multinomial draw over those distinct values, so only counts are drawn;
- otherwise index matrices are drawn in memory-bounded chunks;
- past `max_draws` indices the caller is told to use the normal approximation instead,
  which at such sizes agrees with the bootstrap to within its own Monte-Carlo error.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, stdtrit

MAX_CATEGORIES = 256  # distinct units up to which the multinomial shortcut is used
CHUNK = 1 << 21  # indices drawn per chunk (about 16 MB of int64)
MAX_DRAWS = 6_000_000  # total indices (units x resamples) before falling back to the normal
COMPRESS_MAX = 200_000  # units beyond which looking for few distinct values costs too much


def group_sums(
    num: np.ndarray, den: np.ndarray, groups: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster totals of num and den (the resampling units); unchanged without clusters."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    if groups is None:
        return num, den
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    inv = inv.ravel()
    return np.bincount(inv, weights=num), np.bincount(inv, weights=den)


def ratio_replicates(
    num: np.ndarray,
    den: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    max_draws: int = MAX_DRAWS,
) -> np.ndarray | None:
    """Bootstrap replicates of sum(num)/sum(den), resampling the units; None if too large."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    m = len(num)
    if m == 0 or n_boot < 1:
        raise ValueError("bootstrap needs at least one unit and one resample")
    rng = np.random.default_rng(seed)
    if m <= COMPRESS_MAX:
        rows, counts = np.unique(np.column_stack([num, den]), axis=0, return_counts=True)
        # A multinomial over K values costs about K binomial draws per resample, an index
        # matrix m draws: take the cheaper.
        if len(rows) <= MAX_CATEGORIES and 4 * len(rows) <= m:
            draws = rng.multinomial(m, counts / m, size=n_boot).astype(float)
            sums = draws @ rows
            return _safe_ratio(sums[:, 0], sums[:, 1])
    if m * n_boot > max_draws:
        return None
    out = np.empty(n_boot)
    per_chunk = max(1, CHUNK // m)
    for start in range(0, n_boot, per_chunk):
        stop = min(n_boot, start + per_chunk)
        idx = rng.integers(0, m, size=(stop - start, m))
        out[start:stop] = _safe_ratio(num[idx].sum(axis=1), den[idx].sum(axis=1))
    return out


def _safe_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b with NaN where a resample drew no denominator at all."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def ratio_se(num: np.ndarray, den: np.ndarray) -> float:
    """Linearisation (sandwich) SE of sum(num)/sum(den) over independent units, with m/(m-1)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    m = len(num)
    total = den.sum()
    if m < 2 or total == 0:
        return float("nan")
    r = num.sum() / total
    resid = num - r * den
    return float(np.sqrt(m / (m - 1) * np.sum(resid**2)) / abs(total))


def percentile_interval(
    replicates: np.ndarray, conf: float, units: int | None = None
) -> tuple[float, float]:
    """Percentile bootstrap interval at level `conf`; NaN replicates are ignored.

    With `units` (the number of resampled units m), Hesterberg's (2015) expanded
    percentile interval: the quantiles are taken at the level whose normal quantile is
    sqrt(m/(m-1)) * t_{m-1}, correcting the bootstrap's narrowness in small samples
    (it matters with few clusters, and is negligible with hundreds of items).
    """
    reps = replicates[np.isfinite(replicates)]
    if len(reps) == 0:
        return float("nan"), float("nan")
    tail = 0.5 - conf / 2.0
    if units is not None and units >= 2:
        z = math.sqrt(units / (units - 1.0)) * float(stdtrit(units - 1.0, 0.5 + conf / 2.0))
        tail = float(ndtr(-z))
    lo, hi = np.quantile(reps, [tail, 1.0 - tail])
    return float(lo), float(hi)
