"""Label files: CSV and JSONL round trips, history, and every way a file is rejected whole."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from analysis.labels import (
    check_file,
    export_labels,
    export_rows,
    import_labels,
    read_csv,
    write_export,
)
from proxy.errors import InputError
from proxy.lake.writer import write_rows

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def make_lake(data_dir: Path) -> Path:
    write_rows(
        data_dir,
        "requests",
        [{"request_id": f"r{i}", "received_at": T0} for i in range(1, 5)],
        kind="test",
    )
    write_rows(
        data_dir,
        "responses",
        [
            {"request_id": r, "target": t, "source": "live", "started_at": T0}
            for r in ("r1", "r2", "r3")
            for t in ("production", "cand-a")
        ],
        kind="test",
    )
    return data_dir


CSV_GOOD = """request_id,kind,target,value,labeller,source
r1,reference,,billing,ann,human
r1,verdict,cand-a,correct,ann,
r1,verdict,production,0.25,judge-x,judge
r2,reference,,"{""answer"": ""refund"", ""note"": ""multi\\nline""}",bob,human
r2,preference,,"{""a"": ""cand-a"", ""b"": ""production"", ""winner"": ""a""}",bob,human
r3,outcome,,42,,system
r3,outcome,production,accepted,,system
r4,reference,,  padded text ,ann,
"""


def labels_of(data_dir: Path, history: bool = False) -> list[dict[str, Any]]:
    return export_rows(data_dir, history=history)


def test_csv_import_stores_typed_values(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "lake")
    src = tmp_path / "labels.csv"
    src.write_text(CSV_GOOD)
    assert import_labels(src, lake) == 8
    got = {(r["request_id"], r["kind"], r["target"]): r for r in labels_of(lake)}
    assert json.loads(got["r1", "reference", None]["value"]) == "billing"
    assert got["r1", "verdict", "cand-a"]["value"] == "true"
    assert got["r1", "verdict", "production"]["source"] == "judge"
    assert json.loads(got["r2", "reference", None]["value"])["note"] == "multi\nline"
    assert json.loads(got["r2", "preference", "cand-a vs production"]["value"])["winner"] == "a"
    assert got["r3", "outcome", None]["value"] == "42"
    assert got["r3", "outcome", "production"]["value"] == '"accepted"'
    assert json.loads(got["r4", "reference", None]["value"]) == "  padded text "
    assert got["r1", "verdict", "cand-a"]["source"] == "human"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_import_round_trip_keeps_values_ids_and_times(tmp_path: Path, fmt: str) -> None:
    lake = make_lake(tmp_path / "lake")
    src = tmp_path / "labels.csv"
    src.write_text(CSV_GOOD)
    import_labels(src, lake)
    out = tmp_path / f"export.{fmt}"
    assert export_labels(lake, out, history=True) == 8
    # Into a second lake with the same requests: the same labels, ids and times.
    other = make_lake(tmp_path / "other")
    assert import_labels(out, other) == 8
    assert labels_of(other, history=True) == labels_of(lake, history=True)
    # Importing the same export again into the same lake is refused line by line.
    with pytest.raises(InputError) as err:
        import_labels(out, lake)
    assert "8 bad line(s)" in str(err.value) and "already in the lake" in str(err.value)


def test_jsonl_import_and_latest_versus_history(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "lake")
    src = tmp_path / "a.jsonl"
    lines = [
        {"request_id": "r1", "kind": "reference", "value": "billing", "labeller": "ann"},
        {"request_id": "r1", "kind": "reference", "value": {"answer": "refund"}},
        {"request_id": "r2", "kind": "verdict", "target": "cand-a", "value": {"score": 0.5}},
    ]
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert import_labels(src, lake) == 3
    latest = labels_of(lake)
    assert len(latest) == 2
    assert {r["value"] for r in latest} == {'{"answer": "refund"}', '{"score": 0.5}'}
    assert len(labels_of(lake, history=True)) == 3
    buf = io.StringIO()
    write_export(latest, buf, "jsonl")
    first = json.loads(buf.getvalue().splitlines()[0])
    assert first["value"] == {"answer": "refund"} and "target" not in first


def test_csv_export_writes_bare_text_only_when_it_reads_back_the_same(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "lake")
    src = tmp_path / "a.jsonl"
    lines = [
        {"request_id": "r1", "kind": "outcome", "value": "42"},  # a string that looks like 42
        {"request_id": "r2", "kind": "outcome", "value": "yes"},
        {"request_id": "r3", "kind": "reference", "value": "7"},
    ]
    src.write_text("\n".join(json.dumps(x) for x in lines))
    import_labels(src, lake)
    out = tmp_path / "x.csv"
    export_labels(lake, out)
    text = out.read_text()
    assert ',"""42"""' in text and ",yes," in text and ",7," in text
    other = make_lake(tmp_path / "other")
    import_labels(out, other)
    assert [r["value"] for r in labels_of(other)] == [r["value"] for r in labels_of(lake)]


def reject(tmp_path: Path, name: str, text: str | bytes) -> list[tuple[int, str]]:
    lake = make_lake(tmp_path / "lake")
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    checked = check_file(path, lake)
    assert not checked.ok and checked.rows == []
    with pytest.raises(InputError) as err:
        import_labels(path, lake)
    message = str(err.value)
    assert "nothing was imported" in message
    for e in checked.errors:
        assert f"line {e.item}: " in message
    assert labels_of(lake, history=True) == []  # nothing partial
    return [(e.item, e.reason) for e in checked.errors]


def test_csv_rejections_list_every_bad_line(tmp_path: Path) -> None:
    text = (
        "request_id,kind,target,value,labeller,source\n"
        "r1,reference,,billing,ann,human\n"  # 2 good
        "r9,reference,,x,ann,human\n"  # 3 unknown request
        "r1,verdict,cand-z,true,ann,human\n"  # 4 unknown target
        "r1,verdict,,true,ann,human\n"  # 5 verdict without target
        "r1,grade,,A,ann,human\n"  # 6 unknown kind
        "r1,verdict,cand-a,1.5,ann,human\n"  # 7 out of range
        "r1,outcome,,1,ann,crowd\n"  # 8 bad source
        "r1,reference,,billing\n"  # 9 short row
        "r1,reference,,,ann,human\n"  # 10 empty value
        "r4,verdict,cand-a,true,ann,human\n"  # 11 target without a response for r4
        'r2,preference,,"{""a"": ""cand-a""}",ann,human\n'  # 12 bad preference
    )
    errors = dict(reject(tmp_path, "bad.csv", text))
    assert sorted(errors) == list(range(3, 13))
    assert "unknown request id 'r9'" in errors[3]
    assert "unknown target 'cand-z'" in errors[4]
    assert "needs a target" in errors[5]
    assert "kind must be one of" in errors[6]
    assert "[0, 1]" in errors[7]
    assert "source must be one of" in errors[8]
    assert "expected 6 fields, got 4" in errors[9]
    assert "value is required" in errors[10]
    assert "unknown target 'cand-a' for request 'r4'" in errors[11]
    assert "needs 'b'" in errors[12]


def test_csv_line_numbers_count_multiline_cells(tmp_path: Path) -> None:
    text = (
        "request_id,kind,value\n"
        'r1,reference,"two\nlines"\n'  # lines 2-3
        "r9,reference,x\n"  # line 4
    )
    assert reject(tmp_path, "m.csv", text) == [(4, "unknown request id 'r9'")]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("request_id,kind,target,value,rating", "unknown column(s) 'rating'"),
        ("request_id,target,value", "missing column(s) kind"),
        ("request_id,kind,value,value", "appears twice"),
    ],
)
def test_csv_bad_headers(tmp_path: Path, header: str, reason: str) -> None:
    errors = reject(tmp_path, "h.csv", header + "\nr1,reference,,x,1\n")
    assert len(errors) == 1 and errors[0][0] == 1 and reason in errors[0][1]


def test_jsonl_rejections_list_every_bad_line(tmp_path: Path) -> None:
    lines = [
        json.dumps({"request_id": "r1", "kind": "reference", "value": "ok"}),
        "{not json",
        json.dumps(["r1", "reference", "x"]),
        json.dumps({"request_id": "r1", "kind": "reference", "value": "x", "extra": 1}),
        "",
        json.dumps({"request_id": "r2", "kind": "verdict", "target": "cand-a", "value": "meh"}),
    ]
    errors = dict(reject(tmp_path, "bad.jsonl", "\n".join(lines)))
    assert sorted(errors) == [2, 3, 4, 6]
    assert "not valid JSON" in errors[2]
    assert "must be an object" in errors[3]
    assert "unknown field(s) extra" in errors[4]
    assert "true/false" in errors[6]


def test_unreadable_files(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "lake")
    with pytest.raises(InputError, match="no such label file"):
        import_labels(tmp_path / "missing.csv", lake)
    with pytest.raises(InputError, match="unknown label file type"):
        import_labels(tmp_path / "x.xlsx", lake)
    assert reject(tmp_path, "empty.csv", "")[0][1].startswith("the file is empty")
    assert reject(tmp_path, "empty.jsonl", "\n\n")[0][1] == "the file has no labels"


def test_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "lake")
    path = tmp_path / "latin.csv"
    path.write_bytes("request_id,kind,value\nr1,reference,caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        import_labels(path, lake)


def test_csv_reader_skips_blank_lines_and_bom() -> None:
    items, errors = read_csv("\ufeffrequest_id,kind,value\n\nr1,reference,x\n")
    assert errors == [] and items == [(3, {"request_id": "r1", "kind": "reference", "value": "x"})]
