"""Requests through the proxy end up in the lake: readable by `shadoweval sql`, plain DuckDB and
catalog.duckdb, with no client credential anywhere; SIGTERM under load loses nothing, SIGKILL
loses at most about one flush interval."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import duckdb
import openai
import pyarrow.parquet as pq
import pytest
import yaml
from structlog.testing import capture_logs

from proxy.lake.reader import connect, glob_for
from shadoweval.cli import main
from tests.proxy.conftest import FakeUpstream, ProxyFactory, eventually

CLIENT_KEY = "sk-client-Zx81QwErTyUiOp42SecretKey"


def _lake_hits(root: Path, needle: str) -> list[str]:
    """Files of the lake containing `needle`: raw bytes, or any decoded Parquet value."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if needle.encode() in path.read_bytes():
            hits.append(str(path))
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
            if any(needle in str(v) for col in table.columns for v in col.to_pylist()):
                hits.append(str(path))
    return hits


async def test_requests_through_the_proxy_are_queryable_everywhere(
    upstream: FakeUpstream, start_proxy: ProxyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = await start_proxy(upstream.base_url)
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    with capture_logs() as logs:
        for i in range(6):
            content = f"ticket {i}: reach me at jane{i}@example.com, my key is {CLIENT_KEY}"
            if i % 2:
                stream = await client.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": content}], stream=True
                )
                async for _ in stream:
                    pass
            else:
                await client.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": content}]
                )
        await client.close()
        await proxy.stop()  # SIGTERM's path: the recorder flushes everything
    lake = Path(proxy.settings.storage.data_dir)

    query = (
        "SELECT r.stream, count(*) AS n, count(s.output_text) AS answered "
        "FROM requests r JOIN responses s USING (request_id) "
        "WHERE s.target = 'production' GROUP BY 1 ORDER BY 1"
    )
    printed = capsys.readouterr()  # the proxy's own log lines
    assert main(["sql", "--data", str(lake), query, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert list(csv.reader(io.StringIO(out))) == [
        ["stream", "n", "answered"],
        ["false", "3", "3"],
        ["true", "3", "3"],
    ]
    direct = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{glob_for(lake, 'requests')}') WHERE body LIKE '%[REDACTED]%'"
    )
    assert direct.fetchone() == (6,)
    cat = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    assert cat.execute("SELECT count(*) FROM responses WHERE status = 200").fetchone() == (6,)
    cat.close()

    assert _lake_hits(lake, CLIENT_KEY) == []
    assert _lake_hits(lake, "jane3@example.com") == []
    assert _lake_hits(lake, "ticket 3") != []  # the scan does see stored content
    assert not any(CLIENT_KEY in repr(e) for e in logs)
    assert CLIENT_KEY not in printed.out + printed.err + out


# -- signals under load, against `shadoweval serve` in its own process ----------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_serve(
    tmp_path: Path, upstream: FakeUpstream, flush_interval_s: float, writer_process: bool = True
) -> tuple[asyncio.subprocess.Process, str, Path]:
    port = _free_port()
    lake = tmp_path / "lake"
    config = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 10, "access_log": False},
        "production": {"base_url": upstream.base_url},
        "storage": {
            "data_dir": str(lake),
            "flush_interval_s": flush_interval_s,
            "writer_process": writer_process,
        },
        "logging": {"format": "json", "level": "warning"},
    }
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadoweval",
        "serve",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as s:
        while True:
            if proc.returncode is not None:
                err = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"proxy exited: {err.decode()[-2000:]}")
            try:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "proxy did not become ready"
            await asyncio.sleep(0.1)
    return proc, url + "/v1", lake


async def _load(
    base_url: str, n: int, concurrency: int, answered: list[tuple[str, float]] | None = None
) -> list[tuple[str, float]]:
    """Send chat requests; return (request id, time answered) for every answer received
    (appended to `answered` as they come, when given)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20)
    sem = asyncio.Semaphore(concurrency)
    answered = [] if answered is None else answered

    async def one(i: int) -> None:
        async with sem:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-test", messages=[{"role": "user", "content": f"q{i}"}]
                )
                raw.parse()
                answered.append((raw.headers["x-shadow-request-id"], time.monotonic()))
            except openai.APIError:
                pass  # refused or cut off by the shutdown: the client saw no answer

    await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()
    return answered


def _recorded(lake: Path) -> tuple[set[str], set[str]]:
    con = connect(lake)
    reqs = {r[0] for r in con.execute("SELECT request_id FROM requests").fetchall()}
    resps = {
        r[0]
        for r in con.execute(
            "SELECT request_id FROM responses WHERE target = 'production'"
        ).fetchall()
    }
    return reqs, resps


async def test_sigterm_under_load_loses_no_answered_request(
    tmp_path, upstream: FakeUpstream
) -> None:
    upstream.chunk_delay_s = 0.0
    proc, base_url, lake = await _start_serve(tmp_path, upstream, flush_interval_s=5.0)
    try:
        so_far: list[tuple[str, float]] = []
        load = asyncio.create_task(_load(base_url, 400, 32, so_far))
        await asyncio.sleep(1.0)
        await eventually(lambda: len(so_far) >= 40, 60)  # however slow the machine, under load
        proc.send_signal(signal.SIGTERM)
        answered = await load
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    ids = {rid for rid, _ in answered}
    assert len(ids) > 20  # the signal arrived under load
    reqs, resps = _recorded(lake)
    assert ids <= reqs and ids <= resps, (
        f"{len(ids - reqs)} requests / {len(ids - resps)} answers lost"
    )


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    """Running (an orphan nobody reaps stays a zombie: that is ended too)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


async def _gone(pids: list[int], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, "the lake writer did not end"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("writer_process", [True, False], ids=["writer-process", "writer-thread"])
async def test_sigkill_loses_at_most_about_one_flush_interval(
    tmp_path, upstream: FakeUpstream, writer_process: bool
) -> None:
    interval = 0.5
    proc, base_url, lake = await _start_serve(
        tmp_path, upstream, flush_interval_s=interval, writer_process=writer_process
    )
    try:
        so_far: list[tuple[str, float]] = []
        load = asyncio.create_task(_load(base_url, 1500, 16, so_far))
        await asyncio.sleep(2.5)  # several flushes in: the kill falls in steady state
        await eventually(lambda: len(so_far) >= 150, 60)  # however slow the machine, under load
        writers = _children(proc.pid)
        assert len(writers) == (1 if writer_process else 0)
        killed_at = time.monotonic()
        proc.kill()
        answered = await load
        await asyncio.wait_for(proc.wait(), 30)
        # A writer process outlives the proxy: it flushes what it received, then ends.
        await _gone(writers, 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    _, resps = _recorded(lake)
    lost = [(rid, t) for rid, t in answered if rid not in resps]
    assert len(answered) >= 150
    # Everything answered more than one interval (plus time to write a segment) before the
    # kill is on disk; what was lost was answered in the last moments. With a writer
    # process, only what the proxy had not yet handed over (50 ms of rows) can be lost.
    margin = 1.0 if writer_process else interval + 1.5
    assert all(t > killed_at - margin for _, t in lost), (len(lost), len(answered))
    mode = "process" if writer_process else "thread"
    print(f"SIGKILL ({mode}): {len(lost)} of {len(answered)} answered requests lost")
