"""Confidence thresholds that reach a target precision with stated confidence; risk-coverage data.

Keeping only items with confidence >= t, the precision of the kept items is bounded
below by the one-sided Clopper-Pearson bound. Taking simply the lowest threshold whose
bound passes would choose among many correlated tests and overstate the guarantee (in
simulation it misses the target in 4-6% of runs, at or above the nominal 5%).
Thresholds are therefore tested in a fixed sequence (Bauer 1991; "Learn then Test",
Angelopoulos et al. 2021): from the most confident end downwards, each at level
1 - conf_level, stopping at the first that fails; the lowest threshold passed is
returned. The order depends on the confidences only, never on the labels, so the
chance that the returned threshold's true precision is below the target is at most
1 - conf_level.

The sequence starts at the smallest kept set that could pass with a modest error rate
(a set 1 - (1 - target)/5 precise, e.g. 99% for a 95% target, about 93 items at 95%
confidence), so that one early error among the first few items does not end the search.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.stats.proportions import clopper_pearson_lower_array


@dataclass(frozen=True)
class ThresholdResult:
    """The lowest confidence threshold whose kept items reach the target precision, if any."""

    target_precision: float
    conf_level: float
    threshold: float | None  # None when no threshold reaches the target with the stated confidence
    precision: float | None  # observed precision of the kept items
    precision_lower: float | None  # its one-sided Clopper-Pearson lower bound at conf_level
    coverage: float  # share of items kept
    n_kept: int
    n: int

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "target_precision": self.target_precision,
            "conf_level": self.conf_level,
            "threshold": self.threshold,
            "precision": self.precision,
            "precision_lower": self.precision_lower,
            "coverage": self.coverage,
            "n_kept": self.n_kept,
            "n": self.n,
        }


def _ranked(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds (distinct confidences, descending), kept counts and correct kept counts."""
    c = np.asarray(conf, dtype=float)
    y = np.asarray(correct, dtype=float)
    if c.shape != y.shape or c.ndim != 1:
        raise ValueError("conf and correct need one value per item")
    if np.any(np.isnan(c)) or np.any(np.isnan(y)):
        raise ValueError("conf and correct must not contain NaN")
    order = np.argsort(-c, kind="stable")
    cs, ys = c[order], y[order]
    last = np.ones(len(cs), dtype=bool)  # last item of each run of equal confidence
    last[:-1] = cs[1:] != cs[:-1]
    kept = np.arange(1, len(cs) + 1)[last]
    good = np.cumsum(ys)[last]
    return cs[last], kept, good


@functools.lru_cache(maxsize=64)
def start_size(target: float, conf_level: float, start_precision: float) -> int:
    """Smallest kept count at which a set `start_precision` precise passes the bound."""
    for hi in (100, 1_000, 10_000, 100_000, 1_000_000):
        m = np.arange(1, hi + 1)
        k = np.floor(start_precision * m + 1e-9)
        ok = clopper_pearson_lower_array(k, m, conf_level) >= target
        if ok.any():
            return int(m[np.argmax(ok)])
    return 1_000_001


def threshold_for_precision(
    conf: np.ndarray,
    correct: np.ndarray,
    target: float = 0.95,
    conf_level: float = 0.95,
    *,
    start_precision: float | None = None,
    procedure: str = "fixed_sequence",
) -> ThresholdResult:
    """The lowest threshold, tested in fixed sequence, whose precision lower bound >= target.

    procedure="lowest" returns the lowest threshold whose bound passes, without the
    fixed-sequence guarantee (kept for comparison; see the module docstring).
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target precision must lie in (0, 1), got {target}")
    if procedure not in ("fixed_sequence", "lowest"):
        raise ValueError(f"unknown procedure {procedure!r}")
    thresholds, kept, good = _ranked(conf, correct)
    n = int(kept[-1]) if len(kept) else 0
    none = ThresholdResult(target, conf_level, None, None, None, 0.0, 0, n)
    if procedure == "lowest":
        bounds = clopper_pearson_lower_array(good, kept, conf_level)
        ok = np.flatnonzero(bounds >= target)
        if len(ok) == 0:
            return none
        return _result(target, conf_level, thresholds, kept, good, int(ok[-1]), bounds[ok[-1]], n)
    p0 = 1.0 - (1.0 - target) / 5.0 if start_precision is None else start_precision
    first = np.flatnonzero(kept >= start_size(target, conf_level, p0))
    if n == 0 or len(first) == 0:
        return none
    i0 = int(first[0])
    lower = clopper_pearson_lower_array(good[i0:], kept[i0:], conf_level)
    failed = np.flatnonzero(lower < target)
    passed = len(lower) if len(failed) == 0 else int(failed[0])
    if passed == 0:
        return none
    i = i0 + passed - 1
    return _result(target, conf_level, thresholds, kept, good, i, lower[passed - 1], n)


def _result(
    target: float,
    conf_level: float,
    thresholds: np.ndarray,
    kept: np.ndarray,
    good: np.ndarray,
    i: int,
    bound: float,
    n: int,
) -> ThresholdResult:
    """The result for keeping items at or above thresholds[i]."""
    return ThresholdResult(
        target_precision=target,
        conf_level=conf_level,
        threshold=float(thresholds[i]),
        precision=float(good[i] / kept[i]),
        precision_lower=float(bound),
        coverage=float(kept[i] / n),
        n_kept=int(kept[i]),
        n=n,
    )


def risk_coverage(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selective risk (error rate of kept items) against coverage, one point per distinct threshold."""
    _, kept, good = _ranked(conf, correct)
    if len(kept) == 0:
        return np.zeros(0), np.zeros(0)
    return kept / kept[-1], 1.0 - good / kept
