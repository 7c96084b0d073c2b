"""Calibration of a model's confidence: ECE (plug-in and debiased), MCE, Brier, reliability bins.

Bins are equal-mass: items are sorted by confidence (stable sort, so ties keep their
order) and split into `n_bins` runs of equal size, as numpy.array_split does (Kumar,
Liang & Ma 2019; Roelofs et al. 2022). Plug-in ECE = sum_k (n_k/n) |acc_k - conf_k|.

The plug-in ECE is biased upwards: even a perfectly calibrated model shows
|acc_k - conf_k| of order sqrt(acc(1-acc)/n_k) per bin (about 0.07 at n = 200 with 10
bins). The debiased ECE subtracts that noise per bin in closed form: with
m_k = acc_k - conf_k and s_k^2 = acc_k(1-acc_k)/n_k, it is
sum_k (n_k/n) (2|m_k| - E|N(m_k, s_k^2)|), the normal-approximation bias correction
of Kumar et al. (2019), with the expectation of the folded normal taken exactly
instead of by simulation; it is reported as max(0, .).

What the interval is for: the population ECE with the same equal-mass binning
(sum over population-quantile bins of P(bin) |E[correct - conf | bin]|). Where the
miscalibration has one sign within each bin (e.g. an overconfident model) this equals
the model's true calibration error E|P(correct | conf) - conf|; otherwise it is a lower
bound for it. The percentile interval of bootstrapped plug-in ECEs is centred on the
biased plug-in and misses that truth, so `calibration()` reports the debiased ECE with
a bias-corrected (basic) bootstrap interval around it; coverage is checked by
simulation in tests and reported in docs/statistics.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr

from analysis.stats.estimate import Estimate

CHUNK = 1 << 21  # resample cells (resamples x items) handled per chunk


@dataclass(frozen=True)
class ReliabilityBin:
    """One point of a reliability diagram: the items of one equal-mass bin."""

    lo: float
    hi: float
    mean_conf: float
    accuracy: float
    n: int


@dataclass(frozen=True)
class Calibration:
    """How far a model's stated confidence is from its accuracy, with uncertainty."""

    ece: Estimate  # debiased ECE with its bootstrap interval (see module docstring)
    ece_debiased: float
    mce: float
    brier: float
    n: int
    bins: list[ReliabilityBin]
    ece_plugin: float = float("nan")  # the usual plug-in ECE, biased upwards in small samples
    p_calibrated: float = float("nan")  # p-value of "perfectly calibrated" (consistency resampling)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "ece": self.ece.as_dict(),
            "ece_debiased": float(self.ece_debiased),
            "ece_plugin": float(self.ece_plugin),
            "p_calibrated": float(self.p_calibrated),
            "mce": float(self.mce),
            "brier": float(self.brier),
            "n": int(self.n),
            "bins": [vars(b).copy() for b in self.bins],
        }


def _prepare(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated float arrays sorted by confidence."""
    c = np.asarray(conf, dtype=float)
    y = np.asarray(correct, dtype=float)
    if c.shape != y.shape or c.ndim != 1 or len(c) == 0:
        raise ValueError("conf and correct need the same, non-zero number of items")
    if np.any(~np.isfinite(c)) or np.any(np.isnan(y)):
        raise ValueError("conf and correct must be finite")
    order = np.argsort(c, kind="stable")
    return c[order], y[order]


def bin_bounds(n: int, n_bins: int) -> np.ndarray:
    """Positions 0 = p_0 < ... < p_K = n of equal-mass bins (sizes as numpy.array_split)."""
    k = max(1, min(int(n_bins), n))
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def _bin_sums(
    cs: np.ndarray, ys: np.ndarray, counts: np.ndarray, bounds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin sums of conf and correct for each row of resample counts (items sorted by conf).

    Row r is a multiset of the sorted items (item i taken counts[r, i] times); its sorted
    sequence fills positions 0..n-1 and bin k holds positions [p_k, p_{k+1}). With C the
    cumulative counts, the item at boundary p_k is j_k = min{j : C_j >= p_k}, of which
    C_{j_k} - p_k copies lie past the boundary; a bin's sum is then the items strictly
    between the boundary items plus those boundary copies, so no resample is ever sorted.
    """
    rows, n = counts.shape
    cum_n = np.cumsum(counts, axis=1)
    offset = np.arange(rows)[:, None] * (n + 1)
    j = np.searchsorted((cum_n + offset).ravel(), (bounds[None, :] + offset).ravel())
    j = np.minimum(j.reshape(rows, -1) - np.arange(rows)[:, None] * n, n - 1)
    over = np.take_along_axis(cum_n, j, axis=1) - bounds[None, :]  # copies past p_k
    flat_j = (j + np.arange(rows)[:, None] * n).ravel()
    starts = flat_j + 1
    empty = np.diff(j, axis=1) == 0  # no item strictly between two boundary items
    out = []
    prod = np.zeros(rows * n + 1)  # the trailing zero keeps the last start in range
    for values in (cs, ys):
        np.multiply(counts, values, out=prod[:-1].reshape(rows, n))
        seg = np.add.reduceat(prod, starts).reshape(rows, -1)[:, :-1]
        seg[empty] = 0.0
        # items j_k+1 .. j_{k+1} in full, minus the copies of j_{k+1} past p_{k+1},
        # plus the copies of j_k past p_k.
        edge = over * values[j]
        out.append(seg - edge[:, 1:] + edge[:, :-1])
    return out[0], out[1]


def _ece_rows(
    sum_c: np.ndarray, sum_y: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plug-in and debiased ECE of each row of per-bin sums."""
    n = sizes.sum()
    gap = (sum_y - sum_c) / sizes
    plugin = np.abs(sum_y - sum_c).sum(axis=-1) / n
    acc = np.clip(sum_y / sizes, 0.0, 1.0)
    s = np.sqrt(acc * (1.0 - acc) / sizes)
    folded = np.abs(gap)
    ok = s > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ok, gap / np.where(ok, s, 1.0), 0.0)
    folded = np.where(
        ok,
        s * math.sqrt(2.0 / math.pi) * np.exp(-0.5 * ratio**2) + gap * (1.0 - 2.0 * ndtr(-ratio)),
        np.abs(gap),
    )
    debiased = ((2.0 * np.abs(gap) - folded) * sizes).sum(axis=-1) / n
    return plugin, debiased


def _point(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Sorted data, bin sizes and per-bin sums for the sample itself."""
    cs, ys = _prepare(conf, correct)
    bounds = bin_bounds(len(cs), n_bins)
    sum_c = np.add.reduceat(cs, bounds[:-1])
    sum_y = np.add.reduceat(ys, bounds[:-1])
    return cs, ys, bounds, sum_c, sum_y


def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """Plug-in expected calibration error with equal-mass bins."""
    _, _, bounds, sum_c, sum_y = _point(conf, correct, n_bins)
    return float(_ece_rows(sum_c, sum_y, np.diff(bounds))[0])


def ece_debiased(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """ECE with the per-bin sampling-noise bias removed (Kumar et al. 2019), floored at 0."""
    _, _, bounds, sum_c, sum_y = _point(conf, correct, n_bins)
    return max(0.0, float(_ece_rows(sum_c, sum_y, np.diff(bounds))[1]))


def mce(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """Maximum calibration error: the largest |accuracy - confidence| over equal-mass bins."""
    _, _, bounds, sum_c, sum_y = _point(conf, correct, n_bins)
    return float(np.max(np.abs(sum_y - sum_c) / np.diff(bounds)))


def brier(conf: np.ndarray, correct: np.ndarray) -> float:
    """Brier score: mean squared difference between confidence and correctness."""
    c = np.asarray(conf, dtype=float)
    y = np.asarray(correct, dtype=float)
    if c.shape != y.shape or len(c) == 0:
        raise ValueError("conf and correct need the same, non-zero number of items")
    return float(np.mean((c - y) ** 2))


def reliability_bins(
    conf: np.ndarray, correct: np.ndarray, n_bins: int = 10
) -> list[ReliabilityBin]:
    """Reliability-diagram data: per equal-mass bin, its confidence range, mean confidence, accuracy."""
    cs, _, bounds, sum_c, sum_y = _point(conf, correct, n_bins)
    sizes = np.diff(bounds)
    return [
        ReliabilityBin(
            lo=float(cs[a]),
            hi=float(cs[b - 1]),
            mean_conf=float(sc / k),
            accuracy=float(sy / k),
            n=int(k),
        )
        for a, b, sc, sy, k in zip(bounds[:-1], bounds[1:], sum_c, sum_y, sizes, strict=True)
    ]


def bootstrap_ece(
    conf: np.ndarray, correct: np.ndarray, *, n_bins: int = 10, n_boot: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Plug-in and debiased ECE on each of n_boot resamples (bins recomputed per resample)."""
    cs, ys = _prepare(conf, correct)
    n = len(cs)
    bounds = bin_bounds(n, n_bins)
    sizes = np.diff(bounds)
    rng = np.random.default_rng(seed)
    plugin = np.empty(n_boot)
    debiased = np.empty(n_boot)
    per_chunk = max(1, CHUNK // n)
    for start in range(0, n_boot, per_chunk):
        rows = min(n_boot, start + per_chunk) - start
        idx = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)
        sum_c, sum_y = _bin_sums(cs, ys, counts, bounds)
        plugin[start : start + rows], debiased[start : start + rows] = _ece_rows(
            sum_c, sum_y, sizes
        )
    return plugin, debiased


def null_ece(
    conf: np.ndarray, *, n_bins: int = 10, n_boot: int = 1000, seed: int = 0
) -> np.ndarray:
    """Debiased ECEs a perfectly calibrated model with these confidences would show.

    Consistency resampling (Broecker & Smith 2007): the confidences, hence the bins,
    are kept; each bin's number correct is drawn as Binomial(n_k, mean confidence_k).
    """
    cs = np.sort(np.asarray(conf, dtype=float), kind="stable")
    bounds = bin_bounds(len(cs), n_bins)
    sizes = np.diff(bounds)
    sum_c = np.add.reduceat(cs, bounds[:-1])
    rng = np.random.default_rng(seed)
    sum_y = rng.binomial(sizes, np.clip(sum_c / sizes, 0.0, 1.0), size=(n_boot, len(sizes)))
    return _ece_rows(np.broadcast_to(sum_c, sum_y.shape), sum_y.astype(float), sizes)[1]


def calibration(
    conf: np.ndarray,
    correct: np.ndarray,
    *,
    n_bins: int = 10,
    conf_level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Calibration:
    """All calibration figures, with an interval for the population (equal-mass) ECE.

    The interval is the bootstrap distribution of the debiased ECE re-centred on the
    estimate (its bootstrap bias removed), floored at 0: the percentile interval of
    plug-in ECEs would sit above the truth whenever bins are small. Near perfect
    calibration the debiased estimate still keeps part of the noise bias, so the lower
    end is set to 0 whenever a consistency-resampling test does not reject perfect
    calibration at level 1 - conf_level (`p_calibrated`).
    """
    cs, ys, bounds, sum_c, sum_y = _point(conf, correct, n_bins)
    sizes = np.diff(bounds)
    plugin, debiased = (float(x) for x in _ece_rows(sum_c, sum_y, sizes))
    _, reps = bootstrap_ece(cs, ys, n_bins=n_bins, n_boot=n_boot, seed=seed)
    null = null_ece(cs, n_bins=n_bins, n_boot=n_boot, seed=seed + 1)
    p_calibrated = float((1 + np.sum(null >= debiased)) / (1 + len(null)))
    shift = debiased - float(np.mean(reps))
    q_lo, q_hi = np.quantile(reps, [0.5 - conf_level / 2.0, 0.5 + conf_level / 2.0])
    value = max(0.0, debiased)
    lo = max(0.0, float(q_lo) + shift)
    if p_calibrated > 1.0 - conf_level:
        lo = 0.0
    estimate = Estimate(
        value=value,
        lo=min(lo, value),
        hi=max(value, float(q_hi) + shift),
        n=len(cs),
        method="debiased ECE, bias-corrected bootstrap",
    )
    return Calibration(
        ece=estimate,
        ece_debiased=value,
        mce=float(np.max(np.abs(sum_y - sum_c) / sizes)),
        brier=float(np.mean((cs - ys) ** 2)),
        n=len(cs),
        bins=reliability_bins(cs, ys, n_bins),
        ece_plugin=plugin,
        p_calibrated=p_calibrated,
    )
