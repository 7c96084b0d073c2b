"""Holm's step-down adjustment on a worked example and against its definition."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.stats.multiple import holm


def test_textbook_example() -> None:
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    # (running maximum); back in input order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_caps_at_one_and_handles_edge_cases() -> None:
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []
    assert holm([0.2]) == [0.2]
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_rejections_match_the_step_down_procedure() -> None:
    """Adjusted p <= alpha exactly for the hypotheses Holm's procedure rejects at alpha."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.random(int(rng.integers(1, 12))) ** 3
        alpha = 0.05
        order = np.argsort(p)
        rejected = set()
        for i, j in enumerate(order):
            if p[j] > alpha / (len(p) - i):
                break
            rejected.add(int(j))
        adjusted = holm(p.tolist())
        assert {i for i, a in enumerate(adjusted) if a <= alpha} == rejected
