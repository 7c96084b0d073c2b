"""Estimate: the JSON form carries every number, and nothing JSON cannot hold."""

from __future__ import annotations

import json
import math

import pytest

from analysis.stats.estimate import Estimate, z_value


def test_as_dict_round_trips_through_json() -> None:
    e = Estimate(0.5, 0.4, 0.6, 120, "wilson")
    assert json.loads(json.dumps(e.as_dict())) == {
        "value": 0.5,
        "lo": 0.4,
        "hi": 0.6,
        "n": 120,
        "method": "wilson",
    }


def test_unbounded_ends_become_none() -> None:
    d = Estimate(900.0, 850.0, math.inf, 200, "order statistic").as_dict()
    assert d["hi"] is None and d["lo"] == 850.0
    assert Estimate(math.nan, 0.0, 1.0, 0, "wilson").as_dict()["value"] is None
    json.dumps(d, allow_nan=False)


def test_z_value_matches_the_normal_quantile() -> None:
    assert z_value(0.95) == pytest.approx(1.959963984540054)
    assert z_value(0.90) == pytest.approx(1.6448536269514722)
    with pytest.raises(ValueError):
        z_value(1.0)
