"""Compaction and retention: merged rows are the same rows, readers never see duplicates or gaps."""

import os
import threading
import time
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from proxy.lake.compaction import compact, expired
from proxy.lake.manifest import (
    LIVE,
    SUPERSEDED,
    maintenance_lock,
    manifest_path,
    read_manifest,
    write_manifest,
)
from proxy.lake.reader import connect, glob_for, is_vanished_file_error
from proxy.lake.writer import SegmentWriter
from tests.proxy.lake.conftest import T0, request_row, response_row

ALL = "SELECT * EXCLUDE (writer) FROM requests ORDER BY request_id"


def _segments(root, ds="requests"):
    return sorted(p.name for p in (root / ds).glob("date=*/*.parquet"))


def test_merge_keeps_every_row_once_and_deletes_inputs_after_grace(tmp_path):
    w = SegmentWriter(tmp_path, "w1")
    for i in range(6):
        w.write("requests", [request_row(i * 3 + k, T0 + timedelta(days=i % 2)) for k in range(3)])
    con = connect(tmp_path)
    before = con.execute(ALL).fetchall()

    report = compact(tmp_path, older_than_s=0, grace_s=60, settle_s=0, datasets=["requests"])
    assert (report.merged_segments, report.input_segments, report.rows) == (2, 6, 18)
    assert con.execute(ALL).fetchall() == before
    # Inputs are still on disk (a query may have listed them) but invisible.
    raw = duckdb.execute(
        f"SELECT count(*) FROM read_parquet('{glob_for(tmp_path, 'requests')}')"
    ).fetchone()
    assert raw == (36,)
    states = sorted(
        e.state for e in read_manifest(tmp_path / "requests" / "_manifest.jsonl").values()
    )
    assert states == [LIVE] * 2 + [SUPERSEDED] * 6

    assert compact(tmp_path, older_than_s=0, grace_s=60).deleted_files == 0
    later = compact(tmp_path, older_than_s=0, grace_s=60, now=time.time() + 61)
    assert later.deleted_files == 6
    assert all(n.startswith("compact-") for n in _segments(tmp_path))
    assert len(_segments(tmp_path)) == 2
    assert con.execute(ALL).fetchall() == before
    assert [e.state for e in read_manifest(tmp_path / "requests" / "_manifest.jsonl").values()] == [
        LIVE
    ] * 2


def test_young_segments_are_left_alone(tmp_path):
    w = SegmentWriter(tmp_path, "w1")
    for i in range(3):
        w.write("requests", [request_row(i)])
    assert compact(tmp_path, older_than_s=3600).merged_segments == 0
    assert len(_segments(tmp_path)) == 3


def test_merged_segment_unifies_schema_versions(tmp_path):
    SegmentWriter(tmp_path, "w1").write("requests", [request_row(1)])
    old = pa.table(
        {"request_id": ["old"], "received_at": pa.array([T0], pa.timestamp("us", tz="UTC"))}
    )
    pq.write_table(old, tmp_path / "requests" / "date=2026-03-01" / "w0-000000-old.parquet")
    before = connect(tmp_path).execute(ALL).fetchall()
    assert compact(tmp_path, older_than_s=0, settle_s=0).merged_segments == 1
    assert connect(tmp_path).execute(ALL).fetchall() == before


def test_orphan_merged_segment_is_invisible_and_removed(tmp_path):
    """A pass that died after writing its merged segment but before the manifest switch."""
    w = SegmentWriter(tmp_path, "w1")
    seg = w.write("requests", [request_row(1)])[0]
    orphan = seg.parent / "compact-01ORPHAN.parquet"
    orphan.write_bytes(seg.read_bytes())
    con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM requests").fetchone() == (1,)
    assert compact(tmp_path, older_than_s=3600).removed_temporary == 1
    assert not orphan.exists()


def test_retention_hides_old_partitions_at_once_and_deletes_after_grace(tmp_path):
    now = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
    w = SegmentWriter(tmp_path, "w1")
    for day in (7, 8, 9, 10):
        w.write("responses", [response_row(day, when=now.replace(day=day))])
    assert expired("2026-03-08", 1, now.timestamp()) and not expired(
        "2026-03-09", 1, now.timestamp()
    )
    report = compact(tmp_path, older_than_s=3600, retention_days=1, now=now.timestamp(), grace_s=60)
    assert sorted(report.expired_partitions) == [
        "responses/date=2026-03-07",
        "responses/date=2026-03-08",
    ]
    con = connect(tmp_path)
    days = con.execute("SELECT DISTINCT date FROM responses ORDER BY 1").fetchall()
    assert [d[0].day for d in days] == [9, 10]
    compact(tmp_path, retention_days=1, now=now.timestamp() + 61, grace_s=60)
    assert sorted(p.name for p in (tmp_path / "responses").glob("date=*")) == [
        "date=2026-03-09",
        "date=2026-03-10",
    ]


def test_a_second_compactor_skips_a_locked_dataset(tmp_path):
    SegmentWriter(tmp_path, "w1").write("requests", [request_row(1)])
    with maintenance_lock(tmp_path, "requests") as got:
        assert got
        report = compact(tmp_path, older_than_s=0, lock_timeout_s=0)
    assert report.skipped_locked == ["requests"]


def test_compaction_while_reading_never_shows_duplicates_or_gaps(tmp_path):
    """A writer adds segments, a compactor merges and deletes, a reader checks every row once."""
    written = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        w = SegmentWriter(tmp_path, "w1")
        i = 0
        while not stop.is_set():
            w.write(
                "requests", [request_row(i * 4 + k, T0 + timedelta(days=i % 2)) for k in range(4)]
            )
            written[0] += 4
            i += 1
            time.sleep(0.02)

    def compactor() -> None:
        try:
            while not stop.is_set():
                compact(tmp_path, older_than_s=0, grace_s=2.0, settle_s=1.0, datasets=["requests"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=compactor)]
    for t in threads:
        t.start()
    try:
        con = connect(tmp_path)
        last = 0
        checks = 0
        vanished = 0

        def seen_enough() -> bool:
            return checks > 20 and any(n.startswith("compact-") for n in _segments(tmp_path))

        # At least 5 s of reading, and on until there was something to see (a loaded machine
        # may need longer for 20 queries and a merge).
        start = time.monotonic()
        while (time.monotonic() - start < 5.0 or not seen_enough()) and (
            time.monotonic() - start < 60
        ):
            lower = written[0]  # rows written before the query started are all visible
            try:
                n, distinct = con.execute(
                    "SELECT count(*), count(DISTINCT request_id) FROM requests"
                ).fetchone()
            except duckdb.IOException as exc:
                # A superseded input deleted while this query ran: an error, never a wrong
                # answer (see compaction.py); the query is simply run again.
                assert is_vanished_file_error(exc), exc
                vanished += 1
                continue
            assert n == distinct, f"duplicate rows visible: {n} rows, {distinct} distinct"
            assert n >= max(last, lower), f"rows disappeared: {n}, before {last}, written {lower}"
            last = n
            checks += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    merged = [n for n in _segments(tmp_path) if n.startswith("compact-")]
    assert merged and checks > 20 and vanished < checks
    assert con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone() == (
        written[0],
        written[0],
    )


def test_a_query_sees_one_version_of_the_manifest(tmp_path):
    """The switch may land at any moment of a query: it sees the inputs or the merged segment.

    While a reader counts rows, the manifest appears (the first switch of a lake) and then
    flips between its states before and after a switch as fast as it can be replaced; a
    query reading the manifest more than once (say one read per visibility rule) sees no
    rows or every row twice now and then.
    """
    w = SegmentWriter(tmp_path, "w1")
    for i in range(5):
        w.write("requests", [request_row(i * 4 + k) for k in range(4)])
    mpath = manifest_path(tmp_path, "requests")
    before = read_manifest(mpath)
    assert compact(tmp_path, older_than_s=0, settle_s=0, grace_s=60).merged_segments == 1
    after = read_manifest(mpath)
    mpath.unlink()
    stop = threading.Event()

    def flipper() -> None:
        time.sleep(0.05)
        i = 1
        while not stop.is_set():
            write_manifest(mpath, after if i % 2 else before)
            i += 1

    con = connect(tmp_path)
    t = threading.Thread(target=flipper)
    t.start()
    seen = []
    try:
        start = time.monotonic()  # 1.5 s and at least 21 queries, however slow the machine
        while (time.monotonic() - start < 1.5 or len(seen) <= 20) and time.monotonic() - start < 60:
            seen.append(
                con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
            )
    finally:
        stop.set()
        t.join()
    assert len(seen) > 20
    assert {r for r in seen if r != (20, 20)} == set()


def test_stray_temporary_files_are_removed(tmp_path):
    seg = SegmentWriter(tmp_path, "w1").write("requests", [request_row(1)])[0]
    stray = seg.parent / ".w1-000009-x.parquet.tmp"
    stray.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stray, (old, old))
    assert compact(tmp_path, older_than_s=3600).removed_temporary == 1
    assert not stray.exists() and seg.exists()
