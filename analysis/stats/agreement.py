"""Chance-corrected agreement between two raters (labellers, judge and human, two models)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's (1960) kappa: (p_o - p_e) / (1 - p_e); NaN when undefined (p_e = 1 or no items)."""
    if len(a) != len(b):
        raise ValueError("both raters must rate the same items")
    n = len(a)
    if n == 0:
        return float("nan")
    codes: dict[Hashable, int] = {}
    ia = np.fromiter((codes.setdefault(x, len(codes)) for x in a), dtype=np.int64, count=n)
    ib = np.fromiter((codes.setdefault(x, len(codes)) for x in b), dtype=np.int64, count=n)
    k = len(codes)
    table = np.bincount(ia * k + ib, minlength=k * k).reshape(k, k) / n
    p_o = float(np.trace(table))
    p_e = float(table.sum(axis=1) @ table.sum(axis=0))
    if p_e >= 1.0:
        return float("nan")
    return (p_o - p_e) / (1.0 - p_e)
