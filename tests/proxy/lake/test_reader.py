"""Reading the lake: typed empty views, labels_latest, schema evolution, bad files skipped,
and a reader querying while a writer writes."""

import os
import threading
import time
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from structlog.testing import capture_logs

from proxy.lake.reader import QUARANTINE_DIR, connect
from proxy.lake.writer import SegmentWriter
from tests.proxy.lake.conftest import T0, label_row, request_row


def test_empty_lake_views_are_typed(tmp_path):
    con = connect(tmp_path)
    for name in ("requests", "responses", "labels", "eval_sets", "labels_latest"):
        assert con.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,)
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE requests)").fetchall())
    assert types["received_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["tags"] == "VARCHAR[]"
    assert types["date"] == "DATE"
    assert "filename" not in types and "empty" not in types


def test_views_follow_new_segments_on_the_same_connection(tmp_path):
    con = connect(tmp_path)  # before the first segment exists
    SegmentWriter(tmp_path, "w1").write("requests", [request_row(1)])
    assert con.execute("SELECT request_id, date FROM requests").fetchall() == [
        ("req-000001", T0.date())
    ]
    cols = [d[0] for d in con.execute("SELECT * FROM requests").description]
    assert cols[0] == "request_id" and "filename" not in cols


def test_labels_latest_keeps_newest_per_request_kind_target(tmp_path):
    rows = [
        label_row("r1", {"ok": False}, T0),
        label_row("r1", {"ok": True}, T0 + timedelta(minutes=5)),
        label_row("r1", {"ok": False}, T0 + timedelta(minutes=1), target="cand"),
        label_row("r1", "ref-a", T0, kind="reference"),
        label_row("r2", {"ok": True}, T0),
    ]
    SegmentWriter(tmp_path, "w1").write("labels", rows)
    got = (
        connect(tmp_path)
        .execute("SELECT request_id, kind, target, value FROM labels_latest ORDER BY ALL")
        .fetchall()
    )
    assert got == [
        ("r1", "reference", None, '"ref-a"'),
        ("r1", "verdict", "cand", '{"ok":false}'),
        ("r1", "verdict", None, '{"ok":true}'),
        ("r2", "verdict", None, '{"ok":true}'),
    ]


def test_old_segment_without_a_newer_column_reads_as_null(tmp_path):
    SegmentWriter(tmp_path, "w1").write("requests", [request_row(1)])
    old = pa.table(
        {"request_id": ["old-1"], "received_at": pa.array([T0], pa.timestamp("us", tz="UTC"))}
    )
    pq.write_table(old, tmp_path / "requests" / "date=2026-03-01" / "w0-000000-x.parquet")
    got = connect(tmp_path).execute("SELECT request_id, route FROM requests ORDER BY 1").fetchall()
    assert got == [("old-1", None), ("req-000001", "/v1/chat/completions")]


def test_stray_tmp_and_truncated_segment_are_skipped_with_a_warning(tmp_path):
    w = SegmentWriter(tmp_path, "w1")
    good = w.write("requests", [request_row(i) for i in range(3)])[0]
    part = good.parent
    truncated = part / "w2-000000-trunc.parquet"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage = part / "w3-000000-garbage.parquet"
    garbage.write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")
    stray = part / f".{good.name}.tmp"
    stray.write_bytes(data[:100])
    old = time.time() - 3600
    os.utime(stray, (old, old))
    young = part / ".w9-000001-young.parquet.tmp"
    young.write_bytes(b"in progress")

    with capture_logs() as logs:
        con = connect(tmp_path)
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (3,)
    events = [(e["event"], e.get("path", "")) for e in logs if e["log_level"] == "warning"]
    assert ("stray temporary file skipped", str(stray)) in events
    assert ("bad segment moved to quarantine", str(truncated)) in events
    assert ("bad segment moved to quarantine", str(garbage)) in events
    assert not any(str(young) in p for _, p in events)
    assert not truncated.exists() and not garbage.exists()
    assert (tmp_path / QUARANTINE_DIR / "requests" / part.name / truncated.name).exists()


def test_bad_partition_name_is_quarantined(tmp_path):
    SegmentWriter(tmp_path, "w1").write("requests", [request_row(1)])
    bad_dir = tmp_path / "requests" / "date=oops"
    bad_dir.mkdir()
    pq.write_table(pa.table({"request_id": ["x"]}), bad_dir / "w1-1.parquet")
    with capture_logs() as logs:
        con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM requests").fetchone() == (1,)
    assert any(e["event"] == "bad segment moved to quarantine" for e in logs)


def test_bad_segment_that_cannot_be_moved_is_left_out(tmp_path):
    w = SegmentWriter(tmp_path, "w1")
    good = w.write("requests", [request_row(1)])[0]
    (good.parent / "w2-000000-trunc.parquet").write_bytes(good.read_bytes()[:50])
    (tmp_path / QUARANTINE_DIR).write_text("not a directory")  # moving fails
    with capture_logs() as logs:
        con = connect(tmp_path)
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (1,)
    assert any(e["event"] == "bad segment skipped but could not be moved" for e in logs)


def test_reader_queries_while_a_writer_writes(tmp_path):
    """Never an error, counts only grow, every row once, the last query sees everything."""
    total = 60
    done = threading.Event()

    def write() -> None:
        w = SegmentWriter(tmp_path, "w1")
        for i in range(total):
            w.write("requests", [request_row(i * 5 + k) for k in range(5)])
            time.sleep(0.005)
        done.set()

    con = connect(tmp_path)
    t = threading.Thread(target=write)
    t.start()
    seen = []
    while not done.is_set():
        n, distinct = con.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM requests"
        ).fetchone()
        assert n == distinct
        seen.append(n)
    t.join()
    assert seen == sorted(seen)
    assert len(set(seen)) > 3  # the reader really overlapped the writer
    assert con.execute("SELECT count(*) FROM requests").fetchone() == (total * 5,)
