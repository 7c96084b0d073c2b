"""Segments are complete Parquet files in hive layout, readable by DuckDB."""

from datetime import UTC, datetime

from proxy.lake.reader import connect
from proxy.lake.writer import SegmentWriter


def test_rows_land_in_day_partitions_and_read_back(tmp_path):
    w = SegmentWriter(tmp_path, "t1")
    rows = [
        {"request_id": "a", "received_at": datetime(2026, 1, 1, 23, 59, tzinfo=UTC), "tags": ["x"]},
        {"request_id": "b", "received_at": datetime(2026, 1, 2, 0, 1, tzinfo=UTC), "tags": []},
    ]
    paths = w.write("requests", rows)
    assert sorted(p.parent.name for p in paths) == ["date=2026-01-01", "date=2026-01-02"]
    assert not list(tmp_path.rglob("*.tmp"))
    con = connect(tmp_path)
    got = con.execute(
        "SELECT request_id, writer, schema_version FROM requests ORDER BY 1"
    ).fetchall()
    assert got == [("a", "t1", 1), ("b", "t1", 1)]


def test_empty_lake_has_typed_empty_views(tmp_path):
    con = connect(tmp_path)
    for name in ("requests", "responses", "labels", "eval_sets"):
        assert con.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,)
