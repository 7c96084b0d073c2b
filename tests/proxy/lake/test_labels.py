"""Label validation: values per kind, targets, sources, the lake's ids, and all-or-nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proxy.lake.label_values import pair_target, parse_cell
from proxy.lake.labels import (
    LabelError,
    LakeIndex,
    ParsedLabel,
    check_against_lake,
    finish,
    parse_item,
    validate,
)
from proxy.lake.reader import connect
from proxy.lake.writer import write_rows

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def ok(item: dict[str, Any], **kw: Any) -> ParsedLabel:
    got = parse_item(1, item, **kw)
    assert isinstance(got, ParsedLabel), got
    return got


def bad(item: Any, **kw: Any) -> str:
    got = parse_item(7, item, **kw)
    assert isinstance(got, LabelError), got
    assert got.item == 7
    return got.reason


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (True, True),
        (False, False),
        ("correct", True),
        ("Incorrect", False),
        (" TRUE ", True),
        (0.7, 0.7),
        (1, 1),
        (0, 0),
        ({"correct": True, "comment": "fine"}, {"correct": True, "comment": "fine"}),
        ({"score": 0.25}, {"score": 0.25}),
    ],
)
def test_verdict_values(value: Any, stored: Any) -> None:
    got = ok({"request_id": "r", "kind": "verdict", "target": "production", "value": value})
    assert got.value == stored
    assert type(got.value) is type(stored)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1.5, "[0, 1]"),
        (-0.1, "[0, 1]"),
        ("maybe", "true/false"),
        ([True], "boolean, a word"),
        ({"comment": "x"}, "needs 'correct'"),
        ({"correct": "yes"}, "'correct' must be true or false"),
        ({"score": 2}, "[0, 1]"),
        (float("nan"), "number in [0, 1]"),
    ],
)
def test_bad_verdict_values(value: Any, reason: str) -> None:
    assert reason in bad({"request_id": "r", "kind": "verdict", "target": "c", "value": value})


def test_verdict_needs_a_target_and_reference_must_not_have_one() -> None:
    assert "needs a target" in bad({"request_id": "r", "kind": "verdict", "value": True})
    assert "has no target" in bad(
        {"request_id": "r", "kind": "reference", "target": "c", "value": "x"}
    )


def test_reference_and_outcome_take_any_json() -> None:
    for value in ("billing", {"answer": "42"}, [1, 2], 3.5):
        assert ok({"request_id": "r", "kind": "reference", "value": value}).value == value
        assert ok({"request_id": "r", "kind": "outcome", "value": value}).value == value
    assert "must not be empty" in bad({"request_id": "r", "kind": "reference", "value": "  "})
    assert "value is required" in bad({"request_id": "r", "kind": "outcome"})
    assert "value is required" in bad({"request_id": "r", "kind": "outcome", "value": None})


def test_preference_shape_and_pair_target() -> None:
    got = ok(
        {
            "request_id": "r",
            "kind": "preference",
            "value": {"a": "production", "b": "cand", "winner": "b", "why": "shorter"},
        }
    )
    assert got.target == "cand vs production" == pair_target("production", "cand")
    assert got.targets() == ["production", "cand"]
    same_pair = {"a": "cand", "b": "production", "winner": "tie"}
    item = {"request_id": "r", "kind": "preference", "value": same_pair}
    assert ok({**item, "target": "cand vs production"}).target == got.target
    assert "its pair" in bad({**item, "target": "cand"})
    base = {"request_id": "r", "kind": "preference"}
    assert "must be an object" in bad({**base, "value": "a"})
    assert "needs 'b'" in bad({**base, "value": {"a": "x", "winner": "a"}})
    assert "different targets" in bad({**base, "value": {"a": "x", "b": "x", "winner": "a"}})
    assert "'winner'" in bad({**base, "value": {"a": "x", "b": "y", "winner": "c"}})


def test_fields_kinds_and_sources() -> None:
    base = {"request_id": "r", "kind": "outcome", "value": 1}
    assert ok(base).source == "human"
    assert ok(base, default_source="system").source == "system"
    assert ok({**base, "source": "judge", "labeller": " ann "}).labeller == "ann"
    assert "source must be one of" in bad({**base, "source": "crowd"})
    assert "kind must be one of" in bad({**base, "kind": "rating"})
    assert "kind is required" in bad({"request_id": "r", "value": 1})
    assert "request_id is required" in bad({"kind": "outcome", "value": 1})
    assert "must be a string" in bad({**base, "request_id": 5})
    assert "unknown field(s) requestid" in bad({**base, "requestid": "r"})
    assert "longer than" in bad({**base, "labeller": "x" * 300})
    assert "must be an object" in bad(["r", "outcome", 1])
    # History fields only where history is imported.
    assert "unknown field(s) label_id" in bad({**base, "label_id": "L1"})
    hist = ok({**base, "label_id": "L1", "created_at": "2026-01-01T00:00:00Z"}, allow_history=True)
    assert hist.label_id == "L1" and hist.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert "ISO 8601" in bad({**base, "created_at": "yesterday"}, allow_history=True)


@pytest.mark.parametrize(
    ("kind", "cell", "value"),
    [
        ("reference", "42", "42"),
        ("reference", " spaced ", " spaced "),
        ("reference", '{"answer": "b"}', {"answer": "b"}),
        ("reference", '"quoted"', "quoted"),
        ("reference", "{not json", "{not json"),
        ("verdict", "0.5", 0.5),
        ("verdict", "true", True),
        ("verdict", "correct", "correct"),
        ("outcome", "42", 42),
        ("outcome", "accepted", "accepted"),
        ("preference", '{"a": "x", "b": "y", "winner": "a"}', {"a": "x", "b": "y", "winner": "a"}),
    ],
)
def test_csv_cells(kind: str, cell: str, value: Any) -> None:
    assert parse_cell(kind, cell) == value


def test_lake_checks_request_ids_targets_and_label_ids() -> None:
    index = LakeIndex({"r1": {"cand"}, "r2": set()}, {"L-old"})
    verdict = ok({"request_id": "r1", "kind": "verdict", "target": "cand", "value": 1})
    assert check_against_lake(verdict, index) is None
    on_prod = ok({"request_id": "r2", "kind": "verdict", "target": "production", "value": 1})
    assert check_against_lake(on_prod, index) is None
    other = ok({"request_id": "r2", "kind": "verdict", "target": "cand", "value": 1})
    assert "unknown target 'cand' for request 'r2' (known: production)" in str(
        check_against_lake(other, index)
    )
    ghost = ok({"request_id": "r9", "kind": "outcome", "value": 1})
    assert check_against_lake(ghost, index) == "unknown request id 'r9'"
    pref = ok(
        {
            "request_id": "r2",
            "kind": "preference",
            "value": {"a": "production", "b": "cand", "winner": "a"},
        }
    )
    assert "unknown target 'cand'" in str(check_against_lake(pref, index))
    again = ok(
        {"request_id": "r1", "kind": "outcome", "value": 1, "label_id": "L-old"},
        allow_history=True,
    )
    assert "already in the lake" in str(check_against_lake(again, index))


def test_finish_is_all_or_nothing_and_later_items_win() -> None:
    index = LakeIndex({"r1": set()})
    a = ok({"request_id": "r1", "kind": "reference", "value": "a"})
    b = ok({"request_id": "r1", "kind": "reference", "value": "b"})
    ghost = ok({"request_id": "zz", "kind": "reference", "value": "c"})
    failed = finish([a, ghost], [LabelError(0, "shape")], index)
    assert failed.rows == [] and [e.item for e in failed.errors] == [0, 1]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    done = finish([a, b], [], index, now=now)
    assert done.ok
    assert [r["created_at"] for r in done.rows] == [now, now + timedelta(microseconds=1)]
    assert [json.loads(r["value"]) for r in done.rows] == ["a", "b"]
    assert len({r["label_id"] for r in done.rows}) == 2


def test_validate_against_a_real_lake(tmp_path: Path) -> None:
    write_rows(
        tmp_path,
        "requests",
        [{"request_id": f"r{i}", "received_at": T0} for i in range(3)],
        kind="test",
    )
    write_rows(
        tmp_path,
        "responses",
        [{"request_id": "r1", "target": "cand", "source": "live", "started_at": T0}],
        kind="test",
    )
    write_rows(
        tmp_path,
        "labels",
        [{"label_id": "L-old", "request_id": "r0", "kind": "outcome", "created_at": T0}],
        kind="test",
    )
    con = connect(tmp_path)
    items = [
        (1, {"request_id": "r1", "kind": "verdict", "target": "cand", "value": "incorrect"}),
        (2, {"request_id": "r2", "kind": "reference", "value": {"answer": "x"}}),
    ]
    good = validate(items, con)
    assert good.ok and [r["value"] for r in good.rows] == ["false", '{"answer": "x"}']
    worse = validate(
        [
            *items,
            (3, {"request_id": "r9", "kind": "outcome", "value": 1}),
            (4, {"request_id": "r2", "kind": "verdict", "target": "cand", "value": 1}),
            (5, {"request_id": "r0", "kind": "outcome", "value": 1, "label_id": "L-old"}),
        ],
        con,
        allow_history=True,
    )
    assert worse.rows == []
    assert [e.item for e in worse.errors] == [3, 4, 5]
