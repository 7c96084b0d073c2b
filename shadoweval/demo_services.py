"""The demo's running parts: the simulated models and the proxy, each in its own process.

The proxy runs as `python -m shadoweval serve --config FILE`, exactly as a user starts it, and
stops with SIGTERM so its graceful shutdown (drain shadow calls, flush the recorder) is what
the demo relies on. The simulator runs in a child process too, so its simulated latencies
are not held up by the demo's own client on this machine's cores. Both listen on free
loopback ports and are polled until ready.

The simulated models recognise a ticket even when the lake stored it redacted (an e-mail
address replaced by `[REDACTED]`): replay sends the stored text, and a real model routes a
ticket the same whether or not the customer's address is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

import aiohttp
import pyarrow as pa

from proxy.config import RedactionSettings
from proxy.errors import ShadowevalError
from proxy.lake.redaction import Redactor
from shadoweval.simulator.scenario import load_scenario
from shadoweval.simulator.task import Task, Ticket, load_task

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
LOG_TAIL_CHARS = 2000


def free_port() -> int:
    """A port nobody listens on right now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def redaction_aware_task(seed: int, size: int, redaction: RedactionSettings) -> Task:
    """The task, also finding each ticket by the text the lake keeps after redaction."""
    task = load_task(seed, size)
    redactor = Redactor.from_settings(redaction)
    if not redactor.enabled:
        return task
    by_text: dict[str, Ticket] = {}
    for t in task.tickets:
        by_text[t.text.strip()] = t
        by_text[t.user_message().strip()] = t
    for raw in ([t.text for t in task.tickets], [t.user_message() for t in task.tickets]):
        redacted = redactor.redact_array(pa.array(raw), json=False).to_pylist()
        for ticket, before, after in zip(task.tickets, raw, redacted, strict=True):
            if after is not None and after != before:
                by_text.setdefault(after.strip(), ticket)
    return Task(task.seed, task.tickets, by_text)


async def _serve_simulator(scenario_path: str, port: int, redaction: dict[str, Any]) -> None:
    from shadoweval.simulator.server import start_simulator

    scenario = load_scenario(scenario_path)
    task = redaction_aware_task(
        scenario.task.seed, scenario.task.size, RedactionSettings.model_validate(redaction)
    )
    running = await start_simulator(scenario, HOST, port, task)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.close()


def simulator_main(scenario_path: str, port: int, redaction: dict[str, Any]) -> None:
    """Entry point of the simulator's child process: serve until SIGTERM or SIGINT."""
    from proxy.server import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve_simulator(scenario_path, port, redaction))


async def wait_until_ready(
    url: str, alive: Any, what: str, log: Path | None, within: float = READY_TIMEOUT_S
) -> None:
    """Poll `url` until it answers 200; fail early, with the log's tail, if the process died."""
    deadline = time.monotonic() + within
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            if not alive():
                raise ShadowevalError(f"the {what} stopped while starting{_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise ShadowevalError(f"the {what} did not become ready within {within:.0f} s{_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text("utf-8", errors="replace")[-LOG_TAIL_CHARS:].strip()
    return f"; the end of {log}:\n{text}" if text else ""


class SimulatorProcess:
    """The simulated models, served by a child process (`python -m shadoweval.demo_services`)."""

    def __init__(self, scenario_path: Path, redaction: RedactionSettings, log_path: Path) -> None:
        self.scenario_path = scenario_path
        self.redaction = redaction
        self.log_path = log_path
        self.port = 0
        self._child = _Child(log_path)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    async def start(self) -> None:
        """Start the child on a free port and return once it answers `/v1/models`."""
        self.port = free_port()
        redaction = self.redaction.model_dump_json()
        await self._child.start(
            "shadoweval.demo_services", str(self.scenario_path), str(self.port), redaction
        )
        await self._child.wait_ready(f"{self.base_url}/models", "simulator")

    async def stop(self) -> int | None:
        """SIGTERM and wait for the exit code."""
        return await self._child.stop(10.0, "simulator")


class ProxyProcess:
    """`python -m shadoweval serve --config FILE` as a child process, logging to a file."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self._child = _Child(log_path)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> None:
        """Start `serve` and return once `/readyz` says every resource is up."""
        await self._child.start("shadoweval", "serve", "--config", str(self.config_path))
        await self._child.wait_ready(f"{self.url}/readyz", "proxy")

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM (graceful: drain shadow calls, flush every record) and the exit code."""
        return await self._child.stop(grace_s + 15.0, "proxy")


class _Child:
    """A `python -m MODULE ...` child process whose output goes to a log file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self, module: str, *args: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")  # closed in stop()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )

    async def wait_ready(self, url: str, what: str) -> None:
        proc = self._proc
        assert proc is not None
        await wait_until_ready(url, lambda: proc.returncode is None, what, self.log_path)

    async def stop(self, within_s: float, what: str) -> int | None:
        """SIGTERM and wait up to `within_s`; past that, kill and say so."""
        proc, self._proc = self._proc, None
        try:
            if proc is None:
                return None
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(proc.wait(), within_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise ShadowevalError(
                    f"the {what} did not stop within {within_s:.0f} s of SIGTERM{_tail(self.log_path)}"
                ) from None
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


def main(argv: list[str] | None = None) -> None:
    """`python -m shadoweval.demo_services SCENARIO PORT REDACTION_JSON`: the simulator child."""
    scenario_path, port, redaction = (argv if argv is not None else sys.argv[1:])[:3]
    simulator_main(scenario_path, int(port), json.loads(redaction))


if __name__ == "__main__":
    main()
