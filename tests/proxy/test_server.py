"""`shadoweval serve` as a real process: graceful SIGTERM/SIGINT, and several workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import parse_settings
from proxy.errors import ConfigError
from proxy.lake.reader import connect
from proxy.server import run_workers, worker_settings
from shadoweval.cli import main
from tests.proxy.conftest import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
SECRET_PROMPT = "PROMPT-CONTENT-7f3a"
SECRET_KEY = "sk-client-secret-9b2c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


class Proc:
    """A `shadoweval serve` subprocess and what it logged."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, config: dict[str, Any]) -> None:
        self.proc = proc
        self.port = port
        self.config = config
        self.stderr = b""
        self._reader = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        """Collect the log as it is written (a full pipe would block the proxy)."""
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise AssertionError(f"serve exited with {self.proc.returncode}")
                try:
                    async with s.get(self.url + "/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("serve never became ready")

    async def wait_listening(self, workers: int, within: float = 60.0) -> None:
        """Until every worker has logged "listening": before that, the kernel hands every
        connection to the workers already bound to the port."""
        await until(lambda: self.listening() == set(range(workers)), within)

    def listening(self) -> set[int]:
        return {line["worker"] for line in self.events("listening")}

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log lines of event `name`, in order."""
        return [line for line in self.log_lines() if line.get("event") == name]

    async def wait(self, within: float = 60.0) -> int:
        await asyncio.wait_for(asyncio.shield(self._reader), within)
        return await asyncio.wait_for(self.proc.wait(), within)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.stderr.decode().splitlines():
            with suppress(json.JSONDecodeError):
                lines.append(json.loads(raw))
        return lines


async def post_chats(proc: Proc, n: int) -> None:
    """`n` chat requests, each on a new connection, so the kernel may pick either worker."""
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.post(
                proc.url + "/v1/chat/completions",
                json={"model": "m", "messages": []},
                headers={"Connection": "close"},
            ) as r:
                assert r.status == 200


@asynccontextmanager
async def serve(
    tmp_path: Path, production_url: str, *extra: str, **server: Any
) -> AsyncIterator[Proc]:
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 10, **server},
        "production": {"base_url": production_url, "read_timeout_s": 30},
        "storage": {"data_dir": str(tmp_path / "lake"), "flush_interval_s": 0.5},
        "logging": {"format": "json", "level": "info"},
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadoweval", "serve", "--config", str(path), *extra,
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: workers and writers die with it
    )  # fmt: skip
    p = Proc(proc, port, config)
    try:
        yield p
    finally:
        # The whole group, not the parent alone: a worker or lake writer left behind would
        # hold the log pipe open, and reading it to its end would never finish.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        with suppress(TimeoutError):
            await asyncio.wait_for(p._reader, 10)


async def until(check: Callable[[], bool], within: float) -> None:
    """Poll `check` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def slow_answer(
    upstream: FakeUpstream,
    seconds: float,
    entered: asyncio.Event,
    release: asyncio.Event | None = None,
) -> None:
    """Production answers after `seconds` (and, if given, not before `release` is set)."""
    original = upstream.chat

    async def slow(request: web.Request) -> web.StreamResponse:
        entered.set()
        await asyncio.sleep(seconds)
        if release is not None:
            await release.wait()
        return await original(request)

    upstream.handlers[("POST", "/v1/chat/completions")] = slow


async def test_sigterm_lets_the_in_flight_request_finish_then_exits_0(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    slow_answer(upstream, 1.5, entered, release)
    async with serve(tmp_path, upstream.base_url) as proc:
        await proc.wait_ready()
        body = {"model": "m", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
        async with aiohttp.ClientSession() as s:
            request = asyncio.create_task(
                s.post(
                    proc.url + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {SECRET_KEY}"},
                )
            )
            await entered.wait()
            proc.proc.send_signal(signal.SIGTERM)
            # New connections are refused at once, while the in-flight one is still served.
            await until(lambda: refused(proc.port), within=30)
            assert not request.done()
            release.set()
            resp = await request
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"][
                "content"
            ] == "Hello from the production model."
        assert await proc.wait() == 0
    lines = proc.log_lines()
    events = [line.get("event") for line in lines]
    assert "shutting down" in events and events[-1] == "stopped"
    access = [line for line in lines if line.get("event") == "access"]
    assert len(access) >= 1
    line = next(a for a in access if a["route"] == "/v1/chat/completions")
    assert line["status"] == 200 and line["latency_ms"] > 1000 and line["upstream_ms"] > 1000
    assert len(line["request_id"]) == 26
    # Never prompt content, never credentials.
    assert SECRET_PROMPT.encode() not in proc.stderr
    assert SECRET_KEY.encode() not in proc.stderr
    # Zero records lost: the in-flight request and its answer were flushed before exit.
    con = connect(tmp_path / "lake")
    assert con.execute("SELECT request_id FROM requests").fetchall() == [(line["request_id"],)]
    assert con.execute("SELECT target, status FROM responses").fetchall() == [("production", 200)]


async def test_grace_period_bounds_shutdown(tmp_path: Path, upstream: FakeUpstream) -> None:
    entered = asyncio.Event()
    slow_answer(upstream, 60, entered)
    async with serve(tmp_path, upstream.base_url, shutdown_grace_s=0.5) as proc:
        await proc.wait_ready()
        async with aiohttp.ClientSession() as s:
            request = asyncio.create_task(
                s.post(proc.url + "/v1/chat/completions", json={"model": "m"})
            )
            await entered.wait()
            t0 = time.monotonic()
            proc.proc.send_signal(signal.SIGINT)
            assert await proc.wait(within=30) == 0
            elapsed = time.monotonic() - t0
            with pytest.raises(aiohttp.ClientError):
                resp = await request
                await resp.read()
    # Far below the 60 s the upstream would take; the grace period (0.5 s) applied.
    assert elapsed < 15
    await asyncio.sleep(0.2)
    assert upstream.cancelled == 1


@asynccontextmanager
async def two_workers(tmp_path: Path, upstream: FakeUpstream, requests: int) -> AsyncIterator[Proc]:
    """`serve --workers 2` with both workers listening (each logs its own "listening" line
    with its index), once `requests` chat requests were answered."""
    async with serve(tmp_path, upstream.base_url, "--workers", "2") as proc:
        await proc.wait_ready()
        await proc.wait_listening(2)
        await post_chats(proc, requests)
        yield proc


async def test_workers_share_one_port_and_stop_together(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    async with two_workers(tmp_path, upstream, 20) as proc:
        worker_pids = proc.events("workers started")[0]["pids"]
        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
    stopped = proc.events("stopped")
    assert len(stopped) == 2, proc.stderr.decode()[-3000:]
    for pid in worker_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # Every worker flushed its own segments under its own writer id; no row lost.
    con = connect(tmp_path / "lake")
    assert con.execute("SELECT count(*) FROM requests").fetchone() == (20,)
    assert con.execute("SELECT count(*) FROM responses").fetchone() == (20,)
    writers = {w for (w,) in con.execute("SELECT DISTINCT writer FROM requests").fetchall()}
    assert 1 <= len(writers) <= 2


def running(pid: int) -> bool:
    """Whether `pid` is a live process (an exited one waiting to be reaped is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
async def test_workers_whose_parent_is_killed_drain_and_stop(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """SIGKILL reaches the parent alone and forwards nothing: its workers notice on their own,
    shut down as on SIGTERM and free the port, rather than serve on by themselves."""
    async with two_workers(tmp_path, upstream, 20) as proc:
        started = proc.events("workers started")[0]
        worker_pids, metrics_dir = started["pids"], Path(started["metrics_dir"])
        await until(metrics_dir.is_dir, within=1)
        proc.proc.kill()
        assert await proc.wait() == -signal.SIGKILL  # returns once the workers closed the log
        await until(lambda: not any(running(pid) for pid in worker_pids), within=30)
        assert refused(proc.port)
        # The last worker out removed what the parent would have.
        await until(lambda: not metrics_dir.exists(), within=1)
    gone, stopped = proc.events("parent process gone"), proc.events("stopped")
    assert {line["worker"] for line in gone} == {line["worker"] for line in stopped} == {0, 1}
    # Drained and flushed like a SIGTERM: no row lost.
    con = connect(tmp_path / "lake")
    assert con.execute("SELECT count(*) FROM requests").fetchone() == (20,)
    assert con.execute("SELECT count(*) FROM responses").fetchone() == (20,)


async def test_metrics_of_several_workers_show_all_of_them_whichever_answers(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """Each scrape reaches one worker; every scrape shows the requests of both, summed."""
    async with two_workers(tmp_path, upstream, 30) as proc:

        def served() -> set[int]:
            return {
                line["worker"]
                for line in proc.events("access")
                if line.get("route") == "/v1/chat/completions"
            }

        # Both workers answered some (else this test proves nothing).
        await until(lambda: served() == {0, 1}, within=10)

        async def scrape(s: aiohttp.ClientSession) -> tuple[float, list[float]]:
            """(requests counted, histogram counts) for the chat route, as one scrape saw them."""
            async with s.get(proc.url + "/metrics", headers={"Connection": "close"}) as r:
                text = await r.text()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            total = sum(
                sample.value
                for sample in families["shadoweval_http_requests"].samples
                if sample.labels.get("route") == "/v1/chat/completions"
                and sample.name.endswith("_total")
            )
            counts = [
                sample.value
                for sample in families["shadoweval_http_request_duration_seconds"].samples
                if sample.name.endswith("_count")
                and sample.labels.get("route") == "/v1/chat/completions"
            ]
            return total, counts

        async with aiohttp.ClientSession() as s:
            # Each worker shares its figures every second: wait for the first full scrape...
            deadline = time.monotonic() + 30
            while await scrape(s) != (30, [30]):
                assert time.monotonic() < deadline, "the workers' figures never added up"
                await asyncio.sleep(0.2)
            # ...then every scrape, whichever worker answers it, shows both workers' requests.
            assert [await scrape(s) for _ in range(8)] == [(30, [30])] * 8
        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0


def test_worker_settings_give_each_worker_its_own_writer_id() -> None:
    base = parse_settings(
        {"production": {"base_url": "http://h/v1"}, "storage": {"writer_id": "edge"}}
    )
    assert [worker_settings(base, i).storage.writer_id for i in range(2)] == ["edge-w0", "edge-w1"]
    unnamed = parse_settings({"production": {"base_url": "http://h/v1"}})
    # Without a configured id each process names its segments after its own pid.
    assert worker_settings(unnamed, 1).storage.writer_id is None


def test_several_workers_need_a_fixed_port() -> None:
    settings = parse_settings({"production": {"base_url": "http://h/v1"}, "server": {"port": 0}})
    with pytest.raises(ConfigError, match=r"server\.port"):
        run_workers(settings, 2)


def test_busy_port_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "busy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "server": {"host": "127.0.0.1", "port": port},
                    "production": {"base_url": "http://127.0.0.1:9/v1"},
                    "storage": {"data_dir": str(tmp_path / "lake")},
                    "logging": {"format": "json", "level": "error"},
                }
            )
        )
        assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err
