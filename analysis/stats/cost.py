"""Cost per 1,000 requests, and the expected cost including the configured cost of errors.

Both are (weighted) means scaled to 1,000 requests. Intervals are percentile bootstraps
over requests (vectorised, see resample.py); when units x resamples would exceed the
resampling budget (large traffic samples) the normal interval with the sandwich SE is
used instead, which at such sizes agrees with the bootstrap to within its Monte-Carlo
error. With sampling weights the mean is the Hajek ratio sum(w x) / sum(w). Costs may be
negative, so the same functions serve for the paired difference of two targets' costs.
"""

from __future__ import annotations

import numpy as np

from analysis.stats.estimate import Estimate, z_value
from analysis.stats.resample import percentile_interval, ratio_replicates, ratio_se

PER = 1000.0


def _weighted_mean_estimate(
    x: np.ndarray, w: np.ndarray, conf: float, n_boot: int, seed: int
) -> Estimate:
    """Sum(w x)/sum(w) x 1000 with a bootstrap (or, for very large n, normal) interval."""
    n = len(x)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, "none")
    value = float(np.dot(w, x) / w.sum())
    if n == 1:
        return Estimate(PER * value, float("-inf"), float("inf"), 1, "none")
    reps = ratio_replicates(w * x, w, n_boot=n_boot, seed=seed)
    if reps is not None:
        lo, hi = percentile_interval(reps, conf)
        method = "bootstrap"
    else:
        half = z_value(conf) * ratio_se(w * x, w)
        lo, hi = value - half, value + half
        method = "normal (sandwich SE)"
    return Estimate(PER * value, PER * lo, PER * hi, n, method)


def per_thousand(
    cost_usd: np.ndarray, *, conf: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """Mean cost of a request x 1,000 (NaN costs, e.g. unknown prices, are left out)."""
    x = np.asarray(cost_usd, dtype=float)
    x = x[np.isfinite(x)]
    return _weighted_mean_estimate(x, np.ones(len(x)), conf, n_boot, seed)


def expected_cost(
    call_cost_usd: np.ndarray,
    error_cost_usd: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    conf: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Expected cost of 1,000 requests: what the calls cost plus what their errors cost."""
    call = np.asarray(call_cost_usd, dtype=float)
    err = np.asarray(error_cost_usd, dtype=float)
    if call.shape != err.shape or call.ndim != 1:
        raise ValueError("call and error costs need one value per request")
    w = np.ones(len(call)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != call.shape or np.any(~(w > 0)):
        raise ValueError("weights must be positive, one per request")
    x = call + err
    if np.any(~np.isfinite(x)):
        raise ValueError("costs must be finite")
    return _weighted_mean_estimate(x, w, conf, n_boot, seed)
