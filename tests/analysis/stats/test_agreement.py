"""Cohen's kappa on hand-computed tables."""

from __future__ import annotations

import math

import pytest

from analysis.stats.agreement import cohen_kappa


def test_two_by_two() -> None:
    # yes/yes 20, yes/no 5, no/yes 10, no/no 15 (n = 50): p_o = 0.7,
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.2 / 0.5 = 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_three_by_three() -> None:
    # Rows rater A, columns rater B over (x, y, z):
    #   [[10, 2, 1], [3, 8, 2], [0, 1, 13]], n = 40
    # p_o = 31/40 = 0.775; row totals 13, 13, 14; column totals 13, 11, 16;
    # p_e = (13*13 + 13*11 + 14*16) / 1600 = 536/1600 = 0.335;
    # kappa = (0.775 - 0.335) / 0.665 = 0.66165...
    table = [[10, 2, 1], [3, 8, 2], [0, 1, 13]]
    cats = ["x", "y", "z"]
    a, b = [], []
    for i, row in enumerate(table):
        for j, count in enumerate(row):
            a += [cats[i]] * count
            b += [cats[j]] * count
    assert cohen_kappa(a, b) == pytest.approx(0.44 / 0.665)


def test_perfect_and_undefined_agreement() -> None:
    assert cohen_kappa([1, 2, 3, 1], [1, 2, 3, 1]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError):
        cohen_kappa([1], [1, 2])
