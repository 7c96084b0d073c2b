"""Recalibration of confidence (Platt scaling, temperature scaling), judged by cross-validation.

Both maps act on the logit of the stated confidence: Platt (1999) fits
sigmoid(a * logit(conf) + b) with his smoothed targets (N+ + 1)/(N+ + 2) and
1/(N- + 2), which keeps the fit finite when a fold is all right or all wrong;
temperature scaling (Guo et al. 2017) fits sigmoid(logit(conf) / T). Both minimise the
log loss with scipy.optimize (trust-region Newton, analytic gradient and Hessian).

A recalibration map fitted on the items it is scored on always looks better than it
is, so each item is scored only by a map fitted on the other folds; the ECE and Brier
score reported are those of these out-of-fold confidences. ECE here is the debiased
equal-mass ECE, the same figure `calibration()` reports for the raw confidences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from analysis.stats.calibration import brier, ece, ece_debiased

EPS = 1e-6  # confidences are clipped to [EPS, 1 - EPS] before the logit
METHODS = ("platt", "temperature")
MAX_LOG_SCALE = 7.0  # |log(1/T)| is kept below this (T within e^-7 .. e^7)


@dataclass(frozen=True)
class Recalibrated:
    """Cross-validated result of recalibrating a model's confidence."""

    method: str  # 'temperature' | 'platt'
    ece: float  # debiased ECE of the out-of-fold confidences
    brier: float  # Brier score of the out-of-fold confidences
    conf: np.ndarray = field(repr=False)  # out-of-fold recalibrated confidences, input order
    ece_plugin: float = float("nan")
    folds: int = 5

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (without the per-item confidences)."""
        return {
            "method": self.method,
            "ece": float(self.ece),
            "ece_plugin": float(self.ece_plugin),
            "brier": float(self.brier),
            "folds": int(self.folds),
        }


def logit(conf: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of confidences clipped away from 0 and 1."""
    p = np.clip(np.asarray(conf, dtype=float), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _nll(z: np.ndarray, t: np.ndarray) -> float:
    """Log loss of sigmoid(z) against (possibly smoothed) targets t."""
    return float(np.sum(np.logaddexp(0.0, z) - t * z))


def fit_platt(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of Platt scaling on logits x with Platt's smoothed targets."""
    pos = float(np.sum(y))
    neg = len(y) - pos
    t = np.where(y > 0.5, (pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0))

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * x + theta[1]
        r = expit(z) - t
        return _nll(z, t), np.array([np.dot(r, x), r.sum()])

    def hess(theta: np.ndarray) -> np.ndarray:
        p = expit(theta[0] * x + theta[1])
        v = p * (1.0 - p)
        vx = float(np.dot(v, x))
        return np.array([[float(np.dot(v, x * x)), vx], [vx, float(v.sum())]])

    res = minimize(f, np.array([1.0, 0.0]), jac=True, hess=hess, method="trust-exact")
    return float(res.x[0]), float(res.x[1])


def fit_temperature(x: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the log loss of sigmoid(x / T)."""

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a = np.exp(min(theta[0], MAX_LOG_SCALE))  # a = 1 / T > 0
        z = a * x
        r = expit(z) - y
        return _nll(z, y), np.array([np.dot(r, x) * a])

    def hess(theta: np.ndarray) -> np.ndarray:
        a = np.exp(min(theta[0], MAX_LOG_SCALE))
        p = expit(a * x)
        grad = float(np.dot(p - y, x)) * a
        return np.array([[grad + a * a * float(np.dot(p * (1.0 - p), x * x))]])

    res = minimize(f, np.array([0.0]), jac=True, hess=hess, method="trust-exact")
    res.x[0] = float(np.clip(res.x[0], -MAX_LOG_SCALE, MAX_LOG_SCALE))
    return float(np.exp(-res.x[0]))


def _fit_predict(
    method: str, x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray
) -> np.ndarray:
    """Fit the map on one set of items and apply it to another."""
    if method == "platt":
        a, b = fit_platt(x_fit, y_fit)
        return np.asarray(expit(a * x_new + b))
    return np.asarray(expit(x_new / fit_temperature(x_fit, y_fit)))


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """A seeded assignment of n items to folds of near-equal size."""
    rng = np.random.default_rng(seed)
    ids = np.empty(n, dtype=int)
    ids[rng.permutation(n)] = np.arange(n) % folds
    return ids


def recalibrate_cv(
    conf: np.ndarray,
    correct: np.ndarray,
    method: str = "platt",
    folds: int = 5,
    seed: int = 0,
    *,
    n_bins: int = 10,
) -> Recalibrated:
    """Recalibrate by K-fold cross-validation; every item is scored by a map fitted without it."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    c = np.asarray(conf, dtype=float)
    y = np.asarray(correct, dtype=float)
    if c.shape != y.shape or c.ndim != 1:
        raise ValueError("conf and correct need one value per item")
    n = len(c)
    k = min(int(folds), n)
    if k < 2:
        raise ValueError("cross-validation needs at least 2 items and 2 folds")
    x = logit(c)
    ids = fold_ids(n, k, seed)
    out = np.empty(n)
    for f in range(k):
        test = ids == f
        out[test] = _fit_predict(method, x[~test], y[~test], x[test])
    return Recalibrated(
        method=method,
        ece=ece_debiased(out, y, n_bins),
        brier=brier(out, y),
        conf=out,
        ece_plugin=ece(out, y, n_bins),
        folds=k,
    )
