"""The lake writer in its own process: the same rows reach the lake, bounds and losses are
counted, and the live process and its writer survive each other's faults."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from proxy.lake.reader import connect
from proxy.lake.writer_process import ProcessRecorder
from tests.proxy.lake.conftest import request_row, response_row, storage, until

ROOT = Path(__file__).resolve().parents[3]


def _value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


def _dropped(reg: CollectorRegistry, dataset: str, reason: str) -> float:
    return _value(reg, "shadoweval_recorder_dropped_total", dataset=dataset, reason=reason)


def _count(root: Path, dataset: str) -> int:
    row = connect(root).execute(f"SELECT count(*) FROM {dataset}").fetchone()
    assert row is not None
    return int(row[0])


async def test_rows_reach_the_lake_and_the_writers_counters_reach_metrics(tmp_path):
    reg = CollectorRegistry()
    rec = ProcessRecorder(storage(tmp_path), writer_id="wp1", registry=reg)
    await rec.start()
    for i in range(300):
        assert rec.record("requests", request_row(i))
        assert rec.record("responses", response_row(i))
    await rec.close()
    assert rec.writer_pid is None
    sql = "SELECT count(*), count(DISTINCT request_id), min(writer), max(writer) FROM responses"
    assert connect(tmp_path).execute(sql).fetchone() == (300, 300, "wp1", "wp1")
    assert _count(tmp_path, "requests") == 300
    for dataset in ("requests", "responses"):
        assert _value(reg, "shadoweval_recorder_rows_written_total", dataset=dataset) == 300
        assert _value(reg, "shadoweval_recorder_records_total", dataset=dataset) == 300
    assert _value(reg, "shadoweval_recorder_flush_seconds_count") >= 1
    assert _value(reg, "shadoweval_recorder_buffered_rows") == 0
    text = generate_latest(reg).decode()
    buckets = [line.split('le="')[1].split('"')[0] for line in text.splitlines()
               if line.startswith("shadoweval_recorder_flush_seconds_bucket")]  # fmt: skip
    assert buckets[-1] == "+Inf" and [float(b) for b in buckets[:-1]] == sorted(
        float(b) for b in buckets[:-1]
    )


async def test_rows_wait_within_the_bound_until_a_writer_runs(tmp_path):
    reg = CollectorRegistry()
    rec = ProcessRecorder(storage(tmp_path, buffer_max_rows=100), registry=reg)
    accepted = [rec.record("requests", request_row(i)) for i in range(150)]
    assert accepted.count(True) == 100
    assert _dropped(reg, "requests", "buffer_full") == 50
    assert _value(reg, "shadoweval_recorder_buffered_rows") == 100
    await rec.start()
    await rec.close()  # at once: the writer is still starting, and gets every row
    assert _count(tmp_path, "requests") == 100
    assert not rec.record("requests", request_row(999))
    assert _dropped(reg, "requests", "closed") == 1


def test_an_invalid_writer_id_is_refused_at_once(tmp_path):
    with pytest.raises(ValueError, match="invalid writer id"):
        ProcessRecorder(storage(tmp_path), writer_id="compact-x")


async def test_a_backlog_reaches_the_writer_in_frames(tmp_path):
    reg = CollectorRegistry()
    rec = ProcessRecorder(storage(tmp_path), registry=reg)
    for i in range(5000):  # waiting for the writer: more than one send's worth of frames
        rec.record("requests", request_row(i))
    await rec.start()
    await until(within_s=30, cond=rec.handed_over)
    await rec.close()
    assert _count(tmp_path, "requests") == 5000


async def test_close_after_a_writer_died_writes_what_waited_for_a_new_one(tmp_path):
    reg = CollectorRegistry()
    rec = ProcessRecorder(storage(tmp_path), registry=reg)
    await rec.start()
    first = rec.writer_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await until(within_s=30, cond=lambda: rec.writer_pid is None)
    for i in range(5):  # recorded while no writer runs
        rec.record("requests", request_row(i))
    t0 = time.monotonic()
    await rec.close()
    assert time.monotonic() - t0 < 15
    assert _count(tmp_path, "requests") == 5


async def test_close_without_start_still_writes_every_row(tmp_path):
    rec = ProcessRecorder(storage(tmp_path))
    for i in range(5):
        rec.record("requests", request_row(i))
    await rec.close()
    assert _count(tmp_path, "requests") == 5


async def test_a_row_pickle_cannot_carry_is_dropped_alone(tmp_path):
    reg = CollectorRegistry()
    rec = ProcessRecorder(storage(tmp_path), registry=reg)
    await rec.start()
    rec.record("requests", request_row(1))
    with capture_logs() as logs:
        rec.record("requests", request_row(2, session_id=lambda: None))
        rec.record("requests", request_row(3))
        await rec.close()
    assert _count(tmp_path, "requests") == 2
    assert _dropped(reg, "requests", "invalid") == 1
    assert any(e["event"] == "row not recordable" for e in logs)


async def test_a_killed_writer_is_counted_and_replaced(tmp_path):
    reg = CollectorRegistry()
    rec = ProcessRecorder(storage(tmp_path, flush_interval_s=30), registry=reg)
    await rec.start()
    for i in range(40):
        rec.record("requests", request_row(i))
    # Rows handed over, not yet written (the writer flushes every 30 s or at its end).
    await until(within_s=30, cond=rec.handed_over)
    await asyncio.sleep(0.7)  # a report arrived: the writer holds the 40 rows
    first = rec.writer_pid
    assert first is not None
    with capture_logs() as logs:
        os.kill(first, signal.SIGKILL)
        await until(within_s=30, cond=lambda: rec.writer_pid not in (None, first))
    assert _dropped(reg, "requests", "writer_died") == 40
    assert any(e["event"] == "lake writer exited" and e["exitcode"] == -9 for e in logs)
    for i in range(40, 60):
        rec.record("requests", request_row(i))
    await rec.close()
    assert _count(tmp_path, "requests") == 20
    assert _value(reg, "shadoweval_recorder_rows_written_total", dataset="requests") == 20


async def test_the_writer_ignores_sigterm_and_sigint_and_ends_with_its_pipe(tmp_path):
    reg = CollectorRegistry()
    rec = ProcessRecorder(storage(tmp_path), registry=reg)
    await rec.start()
    rec.record("requests", request_row(1))
    await until(
        within_s=30, cond=lambda: bool(rec.metrics.current)
    )  # the writer is up and has reported
    pid = rec.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    await asyncio.sleep(0.5)
    assert rec.writer_pid == pid
    rec.record("requests", request_row(2))
    await rec.close()
    assert _count(tmp_path, "requests") == 2
    assert _dropped(reg, "requests", "writer_died") == 0


async def test_rows_the_writer_cannot_write_at_close_are_counted_as_lost(tmp_path):
    reg = CollectorRegistry()
    (tmp_path / "requests").write_text("not a directory")
    rec = ProcessRecorder(storage(tmp_path), registry=reg)
    await rec.start()
    rec.record("requests", request_row(1))
    rec.record("requests", request_row(2))
    rec.record("responses", response_row(1))
    await rec.close()
    assert _dropped(reg, "requests", "write_failed") == 2
    assert _value(reg, "shadoweval_recorder_flush_errors_total") >= 1
    assert _count(tmp_path, "responses") == 1


def test_a_sigkilled_live_process_loses_only_what_it_had_not_sent(tmp_path):
    """The writer outlives a SIGKILL of the live process and flushes every row it received."""
    script = textwrap.dedent(f"""
        import asyncio, os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from proxy.lake.writer_process import ProcessRecorder
        from tests.proxy.lake.conftest import request_row, storage

        async def main():
            rec = ProcessRecorder(storage({str(tmp_path)!r}, flush_interval_s=60))
            await rec.start()
            for i in range(500):
                rec.record("requests", request_row(i))
            while not rec.handed_over():
                await asyncio.sleep(0.05)
            print("WRITER", rec.writer_pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    writer = int(proc.stdout.split("WRITER ")[1].split()[0])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{writer}").exists() and "zombie" not in _state(writer):
        assert time.monotonic() < deadline, "the writer did not end after its pipe closed"
        time.sleep(0.05)
    assert _count(tmp_path, "requests") == 500


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (FileNotFoundError, IndexError):
        return "zombie"


def test_the_writer_holds_no_descriptor_of_the_proxy_but_its_pipes(tmp_path):
    """Under uvloop (the proxy's loop) a spawned child inherits every inheritable fd."""
    import uvloop

    async def main() -> tuple[str, set[str]]:
        r, w = os.pipe()
        os.set_inheritable(r, True)
        ours = os.readlink(f"/proc/self/fd/{r}")
        rec = ProcessRecorder(storage(tmp_path))
        await rec.start()
        pid = rec.writer_pid
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        await rec.close()
        os.close(r)
        os.close(w)
        return ours, held

    ours, held = uvloop.run(main())
    assert ours not in held


async def test_a_writer_that_cannot_flush_at_its_end_exits_by_itself(tmp_path, monkeypatch):
    """A hung disk must not keep an orphaned writer alive forever."""
    from proxy.lake import recorder as recorder_module
    from proxy.lake import writer_child

    async def hang(self) -> None:
        await asyncio.Event().wait()

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise asyncio.CancelledError  # stands in for the process ending

    monkeypatch.setattr(recorder_module.Recorder, "close", hang)
    # serve() sets up the writer's logging, which would stay set for the tests after this.
    monkeypatch.setattr("proxy.log.configure_logging", lambda *a, **k: None)
    monkeypatch.setattr(writer_child, "CLOSE_LIMIT_S", 0.3)
    monkeypatch.setattr(writer_child.os, "_exit", fake_exit)
    rows_r, rows_w = os.pipe()
    stats_r, stats_w = os.pipe()
    config = {"storage": storage(tmp_path).model_dump(mode="json"), "writer_id": "hung",
              "maintenance_interval_s": None, "logging": {"format": "json", "level": "error"}}  # fmt: skip
    os.write(rows_w, writer_child.frame(config))
    os.close(rows_w)  # the proxy is gone
    try:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(writer_child.serve(rows_r, stats_w), 10)
    finally:
        os.close(stats_r)
    assert exits == [1]
