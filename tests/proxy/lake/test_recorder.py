"""The recorder: rows in -> segments on disk -> the same rows out, through every way of reading;
bounds, drops, retries and shutdown, all counted."""

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from proxy.lake.reader import connect, glob_for
from proxy.lake.recorder import Recorder
from tests.proxy.lake.conftest import T0, request_row, response_row, storage, until

API_KEY = "sk-proj-Zq8rT3stKeyN0tF0rUse1234"


def _segments(root: Path) -> list[Path]:
    return sorted(root.glob("*/date=*/*.parquet"))


def _dropped(reg: CollectorRegistry, dataset: str, reason: str) -> float:
    return (
        reg.get_sample_value(
            "shadoweval_recorder_dropped_total", {"dataset": dataset, "reason": reason}
        )
        or 0.0
    )


async def test_rows_reach_the_lake_and_read_back_everywhere(tmp_path):
    rec = Recorder(storage(tmp_path), writer_id="rec1")
    await rec.start()
    for i in range(50):
        assert rec.record("requests", request_row(i))
        assert rec.record("responses", response_row(i))
    await rec.close()

    want = [(f"req-{i:06d}", 100.0 + i, f"answer {i}") for i in range(50)]
    sql = (
        "SELECT request_id, latency_ms, output_text FROM requests JOIN responses USING (request_id) "
        "ORDER BY request_id"
    )
    assert connect(tmp_path).execute(sql).fetchall() == want
    # Plain DuckDB on the Parquet files, no views.
    direct = duckdb.connect().execute(
        f"SELECT request_id, latency_ms, output_text FROM read_parquet('{glob_for(tmp_path, 'responses')}') "
        "ORDER BY request_id"
    )
    assert direct.fetchall() == want
    # The catalog the recorder refreshed at start.
    cat = duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True)
    assert cat.execute(sql).fetchall() == want
    row = cat.execute(
        "SELECT tags, stream, writer, schema_version, date FROM requests WHERE request_id = 'req-000002'"
    )
    assert row.fetchone() == (["t1", "n2"], True, "rec1", 1, T0.date())


async def test_record_does_not_touch_disk_and_flushes_on_rows_or_interval(tmp_path):
    rec = Recorder(storage(tmp_path, flush_interval_s=3600, flush_rows=10))
    await rec.start()
    for i in range(9):
        rec.record("requests", request_row(i))
    await asyncio.sleep(0.2)
    assert _segments(tmp_path) == []  # below flush_rows and long before the interval
    rec.record("requests", request_row(9))
    await until(lambda: len(_segments(tmp_path)) == 1)
    assert pq.read_metadata(_segments(tmp_path)[0]).num_rows == 10
    await rec.close()

    rec = Recorder(storage(tmp_path / "b", flush_interval_s=0.1, flush_rows=10_000))
    await rec.start()
    rec.record("responses", response_row(1))
    await until(lambda: len(_segments(tmp_path / "b")) == 1)
    await rec.close()


async def test_full_buffer_drops_are_counted_and_warned_once(tmp_path):
    reg = CollectorRegistry()
    rec = Recorder(storage(tmp_path, buffer_max_rows=5), registry=reg)
    with capture_logs() as logs:
        accepted = [rec.record("requests", request_row(i)) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert _dropped(reg, "requests", "buffer_full") == 3
    warnings = [e for e in logs if e["event"] == "recorder dropped rows"]
    assert len(warnings) == 1 and warnings[0]["buffer_max_rows"] == 5
    assert reg.get_sample_value("shadoweval_recorder_buffered_rows") == 5
    await rec.close()  # never started: close still writes what was accepted
    assert connect(tmp_path).execute("SELECT count(*) FROM requests").fetchone() == (5,)
    assert reg.get_sample_value("shadoweval_recorder_buffered_rows") == 0
    assert not rec.record("requests", request_row(99))
    assert _dropped(reg, "requests", "closed") == 1


async def test_close_is_idempotent_and_concurrent_calls_wait(tmp_path):
    rec = Recorder(storage(tmp_path))
    await rec.start()
    rec.record("requests", request_row(1))
    await asyncio.gather(rec.close(), rec.close())
    await rec.close()
    assert connect(tmp_path).execute("SELECT count(*) FROM requests").fetchone() == (1,)


async def test_content_is_omitted_per_row_or_by_config(tmp_path):
    rec = Recorder(storage(tmp_path / "a"))
    rec.record("requests", request_row(1, _omit_content=True))
    rec.record("requests", request_row(2))
    rec.record("responses", response_row(1, _omit_content=True, logprobs="[1]"))
    await rec.close()
    con = connect(tmp_path / "a")
    rows = con.execute(
        "SELECT request_id, body IS NULL, content_omitted, prompt_hash IS NOT NULL FROM requests ORDER BY 1"
    )
    assert rows.fetchall() == [("req-000001", True, True, True), ("req-000002", False, False, True)]
    got = con.execute("SELECT output_text, logprobs, latency_ms FROM responses").fetchall()
    assert got == [(None, None, 101.0)]

    rec = Recorder(storage(tmp_path / "b", store_content=False))
    rec.record("requests", request_row(3))
    rec.record("responses", response_row(3))
    await rec.close()
    con = connect(tmp_path / "b")
    assert con.execute("SELECT body, content_omitted FROM requests").fetchall() == [(None, True)]
    assert con.execute("SELECT output_text, status FROM responses").fetchall() == [(None, 200)]


async def test_body_as_bytes_or_parsed_json_is_stored_as_text(tmp_path):
    rec = Recorder(storage(tmp_path))
    rec.record("requests", request_row(1, body=b'{"a": "mail x@y.org"}'))
    rec.record("requests", request_row(2, body={"messages": [{"content": "hi"}]}))
    await rec.close()
    got = connect(tmp_path).execute("SELECT body FROM requests ORDER BY request_id").fetchall()
    assert got == [('{"a":"mail [REDACTED]"}',), ('{"messages":[{"content":"hi"}]}',)]


async def test_rows_with_unconvertible_values_are_dropped_and_counted(tmp_path):
    reg = CollectorRegistry()
    rec = Recorder(storage(tmp_path), registry=reg)
    rec.record("responses", response_row(1))
    rec.record("responses", response_row(2, status="two hundred"))
    with capture_logs() as logs:
        await rec.close()
    assert connect(tmp_path).execute("SELECT request_id FROM responses").fetchall() == [
        ("req-000001",)
    ]
    assert _dropped(reg, "responses", "invalid") == 1
    assert any(e["event"] == "rows with unconvertible values dropped" for e in logs)


async def test_rows_are_split_by_utc_day(tmp_path):
    rec = Recorder(storage(tmp_path))
    late = T0.replace(hour=23, minute=59)
    rec.record("requests", request_row(1, received_at=late))
    rec.record("requests", request_row(2, received_at=late + timedelta(minutes=2)))
    await rec.close()
    assert sorted(p.parent.name for p in _segments(tmp_path)) == [
        "date=2026-03-01",
        "date=2026-03-02",
    ]


async def test_time_columns_take_datetimes_or_microseconds_since_the_epoch(tmp_path):
    """Live rows carry integer microseconds (cheaper to pickle); both forms land as the
    same UTC timestamps and are partitioned by the same day."""
    rec = Recorder(storage(tmp_path))
    late = T0.replace(hour=23, minute=59)
    as_us = (late - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    rec.record("requests", request_row(1, received_at=late))
    rec.record("requests", request_row(2, received_at=as_us + 120_000_000))  # 2 min later
    await rec.close()
    con = connect(tmp_path)
    got = con.execute("SELECT received_at FROM requests ORDER BY received_at").fetchall()
    assert [r[0] for r in got] == [late, late + timedelta(minutes=2)]
    assert sorted(p.parent.name for p in _segments(tmp_path)) == [
        "date=2026-03-01",
        "date=2026-03-02",
    ]


async def test_failed_writes_are_retried_until_the_disk_recovers(tmp_path):
    reg = CollectorRegistry()
    blocker = tmp_path / "requests"
    blocker.write_text("a file where the dataset directory should be")
    rec = Recorder(storage(tmp_path, flush_interval_s=0.05), registry=reg)
    await rec.start()
    with capture_logs() as logs:
        rec.record("requests", request_row(1))
        await until(
            lambda: (reg.get_sample_value("shadoweval_recorder_flush_errors_total") or 0) >= 1
        )
    assert any(e["event"] == "segment write failed; rows kept for retry" for e in logs)
    blocker.unlink()
    await until(lambda: len(_segments(tmp_path)) == 1)
    await rec.close()
    assert connect(tmp_path).execute("SELECT count(*) FROM requests").fetchone() == (1,)
    assert _dropped(reg, "requests", "write_failed") == 0


async def test_rows_that_cannot_be_written_at_close_are_counted_as_lost(tmp_path):
    reg = CollectorRegistry()
    (tmp_path / "requests").write_text("not a directory")
    rec = Recorder(storage(tmp_path), registry=reg)
    rec.record("requests", request_row(1))
    rec.record("requests", request_row(2))
    with capture_logs() as logs:
        await rec.close()
    assert _dropped(reg, "requests", "write_failed") == 2
    assert any(e["event"].startswith("rows lost") and e["rows"] == 2 for e in logs)


async def test_two_writers_share_one_lake(tmp_path):
    a = Recorder(storage(tmp_path), writer_id="proxy-a")
    b = Recorder(storage(tmp_path), writer_id="proxy-b")
    await asyncio.gather(a.start(), b.start())
    for i in range(200):
        (a if i % 2 else b).record("requests", request_row(i))
        if i % 50 == 0:
            await asyncio.sleep(0.06)
    await asyncio.gather(a.close(), b.close())
    got = connect(tmp_path).execute(
        "SELECT writer, count(*), count(DISTINCT request_id) FROM requests GROUP BY 1 ORDER BY 1"
    )
    assert got.fetchall() == [("proxy-a", 100, 100), ("proxy-b", 100, 100)]
    names = [p.name for p in _segments(tmp_path)]
    assert len(names) == len(set(names)) and len(names) >= 4


async def test_unknown_dataset_is_a_programming_error(tmp_path):
    rec = Recorder(storage(tmp_path))
    with pytest.raises(KeyError, match="unknown dataset"):
        rec.record("request", {})
    with pytest.raises(ValueError, match="invalid writer id"):
        Recorder(storage(tmp_path), writer_id="compact-1")


def _lake_contains(root: Path, needle: str) -> list[str]:
    """Every file of the lake where `needle` occurs: raw bytes, and decoded Parquet values."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if needle.encode() in path.read_bytes():
            hits.append(str(path))
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
            if any(needle in str(v) for col in table.columns for v in col.to_pylist()):
                hits.append(str(path))
    return hits


async def test_an_api_key_never_reaches_any_file_of_the_lake(tmp_path):
    canary = "canary-ordinary-text-7731"
    rec = Recorder(storage(tmp_path))
    await rec.start()
    rec.record(
        "requests",
        request_row(1, body=f'{{"messages":[{{"content":"use {API_KEY} please\\n{canary}"}}]}}'),
    )
    rec.record(
        "responses",
        response_row(
            1,
            output_text=f"Your key {API_KEY} is set. Authorization: Bearer {API_KEY[3:]}",
            logprobs=f'[{{"token":"{API_KEY}"}}]',
            error_detail=f"401: Incorrect API key provided: {API_KEY}",
        ),
    )
    await rec.close()
    shutil.copy(Path(__file__), tmp_path / "not-lake-control.txt")  # a file that does contain it
    assert _lake_contains(tmp_path, API_KEY) == [str(tmp_path / "not-lake-control.txt")]
    assert _lake_contains(tmp_path, API_KEY[3:]) == [str(tmp_path / "not-lake-control.txt")]
    # The scan does find text the lake stores.
    assert any("/requests/date=" in hit for hit in _lake_contains(tmp_path, canary))


async def test_memory_stays_bounded_when_the_disk_is_gone(tmp_path):
    reg = CollectorRegistry()
    (tmp_path / "requests").write_text("not a directory")
    rec = Recorder(
        storage(tmp_path, buffer_max_rows=50, flush_rows=10, flush_interval_s=0.02), registry=reg
    )
    await rec.start()
    accepted = 0
    for i in range(300):
        accepted += rec.record("requests", request_row(i))
        if i % 10 == 0:
            await asyncio.sleep(0.01)
        assert (reg.get_sample_value("shadoweval_recorder_buffered_rows") or 0) <= 50
    assert accepted == 50
    assert _dropped(reg, "requests", "buffer_full") == 250
    (tmp_path / "requests").unlink()
    await rec.close()
    assert connect(tmp_path).execute("SELECT count(*) FROM requests").fetchone() == (50,)
