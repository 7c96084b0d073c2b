"""Latency and throughput the proxy adds, measured side by side in one run.

Upstreams are Debian's nginx returning a fixed chat completion (near-zero cost), so the
proxy is what is measured. Load comes from C/Go tools: `hey` at a fixed rate (per-request
latencies as CSV, percentiles computed here) and `wrk` for maximum throughput. The proxy
is pinned to CPU 0; nginx, the slow candidates, the load generators and this script to
CPU 1, so the proxy has a core of its own.

Scenarios, interleaved round by round (in a rotating order) so machine noise hits all alike:
  direct         client -> nginx
  aiofloor       client -> aiohttp server + aiohttp client relay -> nginx  (see FLOORS)
  floor          client -> aiohttp server + proxy.upstream relay -> nginx
  rawfloor       client -> asyncio Protocol/llhttp server + proxy.upstream relay -> nginx
  aioproxy       client -> proxy with server.lean_front off (aiohttp serves every request)
  proxy          client -> proxy -> nginx, no candidates (mirroring off)
  mirror10       10% mirrored to 2 candidates (nginx)
  mirror10t      the same with storage.writer_process off (the lake written by a thread of
                 the proxy's process, not by its lake-writer process)
  slowcands      10% mirrored to 2 candidates answering after --slow-ms (default 50 ms)
  downcands      10% mirrored to 2 candidates whose port refuses connections

CPU time and memory count the proxy's whole process tree (its lake-writer process included),
which the taskset pins to the proxy's CPU with it.

After each proxy run the proxy is stopped with SIGTERM and its lake is read with DuckDB:
rows per target and outcome, to confirm every mirrored request was recorded per candidate.

Usage: python -m bench.proxy_overhead [--rounds 3] [--seconds 10] [--rate 200] [--out FILE]
Needs: nginx, hey, wrk, taskset (installed with apt-get when missing and running as root).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import yaml

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "billing"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 1, "total_tokens": 43},
    }
)
BODY = json.dumps(
    {
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "Route the ticket to one queue."},
            {"role": "user", "content": "My invoice was charged twice this month, please help."},
        ],
    }
)
PROXY_CPU = 0
LOAD_CPU = 1
# hey prints latencies in seconds with 4 decimals: a 0.1 ms resolution.
HEY_BIN_MS = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_tools() -> None:
    """Find (or, as root on Debian, install) nginx, hey, wrk and taskset."""
    if not shutil.which("nginx") and Path("/usr/sbin/nginx").exists():
        os.environ["PATH"] += ":/usr/sbin"
    missing = [t for t in ("nginx", "hey", "wrk", "taskset") if not shutil.which(t)]
    if not missing:
        return
    pkgs = {"nginx": "nginx-light", "hey": "hey", "wrk": "wrk", "taskset": "util-linux"}
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", *[pkgs[m] for m in missing]], check=True)
    else:
        sys.exit(f"bench needs {', '.join(missing)} (Debian packages {[pkgs[m] for m in missing]})")


def pin_to_load_cpu() -> None:
    """Keep this script and everything it starts (except the proxy) off the proxy's core."""
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {LOAD_CPU})


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


@contextlib.contextmanager
def nginx(port: int, workdir: Path) -> Iterator[str]:
    """A loopback nginx answering every request with the fixed completion."""
    conf = workdir / f"nginx-{port}.conf"
    conf.write_text(
        f"""
worker_processes 1;
pid {workdir}/nginx-{port}.pid;
error_log {workdir}/nginx-{port}.err warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            default_type application/json;
            return 200 '{COMPLETION}';
        }}
    }}
}}
"""
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)])
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def slow_upstream(delay_ms: float) -> Iterator[str]:
    """A candidate answering the fixed completion after `delay_ms`, in its own process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.proxy_overhead", "--serve-slow", str(port),
         "--slow-ms", str(delay_ms)],
    )  # fmt: skip
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def serve_slow(port: int, delay_ms: float) -> None:
    """Body of the slow-candidate process (`--serve-slow PORT`)."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay_ms / 1000.0)
        return web.Response(text=COMPLETION, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


@dataclass
class Proxy:
    """A running proxy process: where to send requests, its pid and its lake."""

    url: str
    pid: int
    lake: Path


# The floors: relays that do nothing but relay, pinned to the proxy's core, so the proxy's
# own work can be told from its framework's. Each reads the body, sends it upstream over a
# keep-alive pool, reads the whole answer and returns it: no ids, metrics, logs, records.
FLOORS = {
    "aiofloor": "aiohttp server + aiohttp client (the proxy's stack before proxy/upstream.py)",
    "floor": "aiohttp server + proxy.upstream's lean client (the proxy's stack now)",
    "rawfloor": "asyncio Protocol server on llhttp + proxy.upstream's lean client",
}


def serve_relay(port: int, upstream: str, kind: str) -> None:
    """Body of a floor process (`--serve-relay PORT --relay-kind KIND`); see FLOORS."""
    import aiohttp
    import uvloop
    from aiohttp import web

    from proxy.upstream import UpstreamPool

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        pool = UpstreamPool(
            upstream, limit=1000, connect_timeout=5, read_timeout=30, total_timeout=60
        )
        json_headers = [(b"Content-Type", b"application/json")]

        async def relay(target: str, body: bytes) -> tuple[int, bytes]:
            answer = await pool.request("POST", target, json_headers, body)
            parts = []
            while chunk := await answer.read():
                parts.append(chunk)
            answer.release()
            return answer.status, b"".join(parts)

        if kind == "rawfloor":
            await loop.create_server(lambda: _RawRelay(relay), "127.0.0.1", port, backlog=1024)
            await asyncio.Event().wait()
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        base = upstream.rstrip("/")

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            if kind == "aiofloor":
                async with session.post(
                    base + request.path[3:],
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as r:
                    status, data = r.status, await r.read()
            else:
                status, data = await relay("/v1" + request.path[3:], body)
            return web.Response(body=data, status=status, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    uvloop.run(serve())


class _RawRelay(asyncio.Protocol):
    """The least an HTTP/1.1 keep-alive relay can be in Python: llhttp in, llhttp out."""

    def __init__(self, relay: Any) -> None:
        import httptools

        self._relay = relay
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        url, body = self._url.decode(), b"".join(self._body)
        self._url, self._body = b"", []
        task = asyncio.get_running_loop().create_task(self._answer(url, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, url: str, body: bytes) -> None:
        status, data = await self._relay(url, body)
        if self._transport is not None and not self._transport.is_closing():
            head = (
                f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            )
            self._transport.write(head.encode() + data)


@contextlib.contextmanager
def floor_relay(kind: str, production: str, cpu: int = PROXY_CPU) -> Iterator[Proxy]:
    """A floor relay (see FLOORS) pinned to the proxy's CPU."""
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), sys.executable, "-m", "bench.proxy_overhead",
         "--serve-relay", str(port), "--relay-kind", kind, "--upstream", production],
    )  # fmt: skip
    try:
        wait_port(port)
        yield Proxy(f"http://127.0.0.1:{port}/v1", proc.pid, Path())
    finally:
        proc.terminate()
        proc.wait(10)


def proxy_config(
    port: int,
    production: str,
    candidates: list[str],
    rate: float,
    lake: Path,
    lean_front: bool = True,
    writer_process: bool = True,
) -> dict[str, Any]:
    """The proxy's config for one scenario: product defaults except where the bench needs."""
    return {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "shutdown_grace_s": 5,
            "lean_front": lean_front,
        },
        "production": {"base_url": production},
        "candidates": [
            {"name": f"c{i}", "base_url": url, "model": "cand", "timeout_s": 5}
            for i, url in enumerate(candidates)
        ],
        "sampling": {"rate": rate},
        "storage": {"data_dir": str(lake), "writer_process": writer_process},
        "logging": {"format": "json", "level": "warning"},
    }


@contextlib.contextmanager
def proxy(
    production: str,
    candidates: list[str],
    rate: float,
    workdir: Path,
    cpu: int = PROXY_CPU,
    lean_front: bool = True,
    writer_process: bool = True,
) -> Iterator[Proxy]:
    """`shadoweval serve` pinned to the proxy's CPU; SIGTERM (graceful, lake flushed) on exit."""
    port = free_port()
    lake = workdir / f"lake-{port}"
    path = workdir / f"proxy-{port}.yaml"
    config = proxy_config(port, production, candidates, rate, lake, lean_front, writer_process)
    path.write_text(yaml.safe_dump(config))
    log_path = workdir / f"proxy-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, "-m", "shadoweval", "serve",
             "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_port(port)
            yield Proxy(f"http://127.0.0.1:{port}/v1", proc.pid, lake)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    if code != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"proxy exited with {code}:\n{tail}")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the proxy and its lake-writer process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its descendants."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    if not total:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return total


# Fixed-rate load comes from this many `hey` processes, one connection each, started
# `rate`-spaced apart. One hey with `-c 10 -q 20` would tick all ten workers together,
# sending bursts of 10 requests every 50 ms instead of one request every 5 ms.
LOAD_WORKERS = 10


def hey_command(url: str, seconds: float, rate: float, body_file: Path, csv_out: bool) -> list[str]:
    """One hey worker: a single keep-alive connection sending `rate` req/s for `seconds`."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", "1", "-q", str(rate),
           "-m", "POST", "-T", "application/json", "-D", str(body_file)]  # fmt: skip
    if csv_out:
        cmd += ["-o", "csv"]
    return [*cmd, url + "/chat/completions"]


def start_load(
    url: str, seconds: float, rate: int, body_file: Path, csv_out: bool
) -> list[subprocess.Popen[str]]:
    """LOAD_WORKERS hey processes at rate/LOAD_WORKERS each, phases spread over one period."""
    procs = []
    for _ in range(LOAD_WORKERS):
        procs.append(
            subprocess.Popen(
                hey_command(url, seconds, rate / LOAD_WORKERS, body_file, csv_out),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        time.sleep(1.0 / rate)
    return procs


def hey_latencies(url: str, seconds: float, rate: int, body_file: Path) -> list[float]:
    """Per-request latencies in ms at a steady rate; any non-200 answer fails the run."""
    rows: list[dict[str, str]] = []
    for proc in start_load(url, seconds, rate, body_file, csv_out=True):
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"hey failed against {url}: {err[-500:]}")
        rows += csv.DictReader(io.StringIO(out))
    bad = [r for r in rows if r.get("status-code") != "200"]
    if bad or not rows:
        raise RuntimeError(f"{len(bad)} non-200 answers (of {len(rows)}) from {url}")
    if len(rows) < 0.95 * seconds * rate:
        # The target could not keep up (or the machine was busy): kept, and visible in the
        # summary as achieved_rps below the requested rate.
        print(f"warning: {len(rows)} answers from {url} in {seconds}s at {rate}/s", flush=True)
    return [float(r["response-time"]) * 1000 for r in rows]


def wrk_throughput(url: str, seconds: float, workdir: Path) -> float:
    """Requests/s with 64 keep-alive connections and no pause (the process's ceiling)."""
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{BODY}]]\n"
    )
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{max(1, round(seconds))}s", "-s", str(script), url + "/chat/completions"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures against {url}:\n{out}")
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(f"wrk printed no rate:\n{out}")


def warm_up(url: str, body_file: Path) -> None:
    """Open the proxy's pools and warm its code paths before anything is measured."""
    subprocess.run(
        ["hey", "-n", "400", "-c", "10", "-m", "POST", "-T", "application/json",
         "-D", str(body_file), url + "/chat/completions"],
        capture_output=True, check=True,
    )  # fmt: skip


def quantile(values: list[float], q: float, bin_ms: float = HEY_BIN_MS) -> float:
    """The q-quantile of latencies rounded to `bin_ms`, interpolated within its bin.

    Each reported value v stands for [v - bin/2, v + bin/2); spreading its samples evenly
    over that interval gives sub-resolution percentiles instead of 0.1 ms steps.
    """
    counts: dict[float, int] = {}
    for v in values:
        key = round(v / bin_ms) * bin_ms
        counts[key] = counts.get(key, 0) + 1
    target = q * len(values)
    seen = 0
    for centre in sorted(counts):
        n = counts[centre]
        if seen + n >= target:
            return centre - bin_ms / 2 + bin_ms * (target - seen) / n
        seen += n
    return max(values)


def lake_counts(lake: Path) -> dict[str, Any]:
    """Rows the proxy recorded: requests (and how many mirrored), responses per target/outcome."""
    con = duckdb.connect()
    out: dict[str, Any] = {}

    def rows(dataset: str) -> str:
        return (
            f"read_parquet('{lake}/{dataset}/date=*/*.parquet', "
            "hive_partitioning=true, union_by_name=true)"
        )

    if not list((lake / "requests").glob("date=*/*.parquet")):
        return {"requests": 0, "mirrored": 0, "responses": {}}
    total, mirrored = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE mirrored) FROM {rows('requests')}"
    ).fetchone() or (0, 0)
    out["requests"], out["mirrored"] = int(total), int(mirrored)
    responses: dict[str, dict[str, int]] = {}
    for target, error, n in con.execute(
        f"SELECT target, coalesce(error, 'ok'), count(*) FROM {rows('responses')} GROUP BY ALL"
    ).fetchall():
        responses.setdefault(target, {})[error] = int(n)
    out["responses"] = responses
    return out


def summarise(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


SCENARIOS = (
    "direct", "aiofloor", "floor", "rawfloor", "aioproxy", "proxy", "mirror10", "mirror10t",
    "slowcands", "downcands",
)  # fmt: skip
PROXIED = SCENARIOS[1:]
THROUGHPUT = ("direct", *FLOORS, "aioproxy", "proxy", "mirror10", "mirror10t")


def cpu_busy(cpu: int) -> tuple[float, float]:
    """Seconds CPU `cpu` has been busy (any process) and stolen by the hypervisor, so far."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            tick = os.sysconf("SC_CLK_TCK")
            # user nice system idle iowait irq softirq steal
            return (v[0] + v[1] + v[2] + v[5] + v[6]) / tick, v[7] / tick
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


class Measure:
    """One fixed-rate run (and optionally one max-throughput run) against one target."""

    def __init__(self, args: argparse.Namespace, body_file: Path, work: Path) -> None:
        self.args, self.body_file, self.work = args, body_file, work
        self.raw: dict[str, dict[str, list[float]]] = {s: {} for s in SCENARIOS}
        self.latencies: dict[str, list[float]] = {s: [] for s in SCENARIOS}

    def add(self, name: str, key: str, value: float) -> None:
        self.raw[name].setdefault(key, []).append(value)

    def __call__(self, name: str, url: str, pid: int | None) -> None:
        args = self.args
        cpu0 = cpu_seconds(pid) if pid else 0.0
        busy0, steal0 = cpu_busy(args.proxy_cpu)
        load0, _ = cpu_busy(LOAD_CPU)
        t0 = time.monotonic()
        lat = hey_latencies(url, args.seconds, args.rate, self.body_file)
        wall = time.monotonic() - t0
        self.latencies[name] += lat
        busy, steal = (
            x - y for x, y in zip(cpu_busy(args.proxy_cpu), (busy0, steal0), strict=True)
        )
        # CPU 1 carries hey and nginx (a few %); the rest of its load is other work.
        self.add(name, "cpu1_busy_pct", (cpu_busy(LOAD_CPU)[0] - load0) / wall * 100)
        self.add(name, "p50", quantile(lat, 0.5))
        self.add(name, "p99", quantile(lat, 0.99))
        self.add(name, "mean", statistics.fmean(lat))
        self.add(name, "achieved_rps", len(lat) / args.seconds)
        if pid:
            cpu = cpu_seconds(pid) - cpu0
            self.add(name, "cpu_us_per_req", cpu / len(lat) * 1e6)
            # CPU 0 time used by anything but the proxy: other engineers' tests, the kernel.
            self.add(name, "cpu0_others_pct", max(0.0, busy - cpu) / wall * 100)
        self.add(name, "cpu0_steal_pct", steal / wall * 100)
        if name in THROUGHPUT and not args.no_wrk:
            self.add(name, "max_rps", wrk_throughput(url, args.wrk_seconds, self.work))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All rounds, scenarios in a rotating order; then per-round differences and summaries."""
    work = Path(tempfile.mkdtemp(prefix="shadoweval-bench-"))
    body_file = work / "body.json"
    body_file.write_text(BODY)
    measure = Measure(args, body_file, work)
    lakes: dict[str, list[dict[str, Any]]] = {}
    info = machine()
    loads: list[tuple[float, float, float]] = []
    ports = [free_port() for _ in range(3)]
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    with (
        nginx(ports[0], work) as prod,
        nginx(ports[1], work) as cand1,
        nginx(ports[2], work) as cand2,
        slow_upstream(args.slow_ms) as slow1,
        slow_upstream(args.slow_ms) as slow2,
    ):
        candidates = {
            "aioproxy": ([], 0.0),
            "proxy": ([], 0.0),
            "mirror10": ([cand1, cand2], 0.1),
            "mirror10t": ([cand1, cand2], 0.1),
            "slowcands": ([slow1, slow2], 0.1),
            "downcands": ([down, down], 0.1),
        }
        warm_up(prod, body_file)
        chosen = tuple(name for name in SCENARIOS if name in args.scenarios)
        for rnd in range(args.rounds):
            loads.append(os.getloadavg())
            k = rnd % len(chosen)
            order = chosen[k:] + chosen[:k]
            print(f"round {rnd + 1}/{args.rounds}: {' '.join(order)}", flush=True)
            for name in order:
                if name == "direct":
                    measure(name, prod, None)
                elif name in FLOORS:
                    with floor_relay(name, prod, args.proxy_cpu) as f:
                        warm_up(f.url, body_file)
                        measure(name, f.url, f.pid)
                else:
                    cands, rate = candidates[name]
                    lean = name != "aioproxy"
                    writer = name != "mirror10t"
                    with proxy(prod, cands, rate, work, args.proxy_cpu, lean, writer) as p:
                        warm_up(p.url, body_file)
                        measure(name, p.url, p.pid)
                    lakes.setdefault(name, []).append(lake_counts(p.lake))
            last = {s: {m: round(v[-1], 3) for m, v in d.items()} for s, d in measure.raw.items()}
            print(json.dumps(last), flush=True)
    info["loadavg_per_round"] = loads
    info["loadavg_end"] = os.getloadavg()
    shutil.rmtree(work, ignore_errors=True)
    summary = derive(measure.raw, lakes, info, args)
    summary["pooled"] = pooled(measure.latencies)
    return summary


def pooled(latencies: dict[str, list[float]], draws: int = 1000) -> dict[str, Any]:
    """Percentiles over all rounds' requests together, with bootstrap 95% intervals.

    The intervals resample requests, so they show the sampling noise of a percentile of
    this many requests - not the drift between rounds, which the per-round min-max shows.
    """
    rng = np.random.default_rng(0)
    # hey rounds to 0.1 ms: spread each value over its bin, as `quantile` does.
    arrays = {
        name: np.asarray(v) + rng.uniform(-HEY_BIN_MS / 2, HEY_BIN_MS / 2, len(v))
        for name, v in latencies.items()
        if v
    }
    boot: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        qs = [np.quantile(rng.choice(arr, len(arr)), (0.5, 0.99)) for _ in range(draws)]
        boot[name] = np.asarray(qs)  # draws x (p50, p99)

    def est(point: float, samples: np.ndarray) -> dict[str, Any]:
        lo, hi = np.quantile(samples, (0.025, 0.975))
        return {"value": float(point), "ci95": [float(lo), float(hi)]}

    out: dict[str, Any] = {}
    for name, arr in arrays.items():
        p50, p99 = np.quantile(arr, (0.5, 0.99))
        entry = {
            "n": len(arr),
            "p50": est(p50, boot[name][:, 0]),
            "p99": est(p99, boot[name][:, 1]),
        }
        if name != "direct" and "direct" in arrays:
            d50, d99 = np.quantile(arrays["direct"], (0.5, 0.99))
            entry["added_p50"] = est(p50 - d50, boot[name][:, 0] - boot["direct"][:, 0])
            entry["added_p99"] = est(p99 - d99, boot[name][:, 1] - boot["direct"][:, 1])
        if name in ("mirror10", "slowcands", "downcands") and "proxy" in arrays:
            b99 = np.quantile(arrays["proxy"], 0.99)
            entry["p99_vs_proxy"] = est(p99 / b99, boot[name][:, 1] / boot["proxy"][:, 1])
        out[name] = entry
    return out


def derive(
    raw: dict[str, dict[str, list[float]]],
    lakes: dict[str, list[dict[str, Any]]],
    info: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Per-round differences and ratios (same round, so shared noise cancels), then summaries."""
    direct = raw["direct"]
    derived: dict[str, dict[str, list[float]]] = {}
    for name in PROXIED:
        if not raw[name]:
            continue  # not among --scenarios
        d = derived.setdefault(name, {})
        for q in ("p50", "p99", "mean"):
            d[f"added_{q}"] = [a - b for a, b in zip(raw[name][q], direct[q], strict=True)]
    for name in ("slowcands", "downcands", "mirror10"):
        if not raw[name] or not raw["proxy"]:
            continue
        d = derived[name]
        d["p99_vs_proxy"] = [
            a / b for a, b in zip(raw[name]["p99"], raw["proxy"]["p99"], strict=True)
        ]
        if name != "mirror10" and raw["mirror10"]:
            d["p99_vs_mirror10"] = [
                a / b for a, b in zip(raw[name]["p99"], raw["mirror10"]["p99"], strict=True)
            ]
    summary: dict[str, Any] = {
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "rate": args.rate,
            "wrk_seconds": args.wrk_seconds,
            "proxy_cpu": args.proxy_cpu,
            "load_cpu": LOAD_CPU,
            "slow_ms": args.slow_ms,
        },
        "machine": info,
        "scenarios": {},
        "lake": lakes,
    }
    for name in SCENARIOS:
        if not raw[name]:
            continue
        metrics = {**raw[name], **derived.get(name, {})}
        summary["scenarios"][name] = {m: summarise(v) for m, v in metrics.items()}
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10, help="fixed-rate run per scenario")
    ap.add_argument("--rate", type=int, default=200, help="requests/s of the fixed-rate runs")
    ap.add_argument("--wrk-seconds", type=float, default=10, help="max-throughput run")
    ap.add_argument("--no-wrk", action="store_true", help="skip the max-throughput runs")
    ap.add_argument("--slow-ms", type=float, default=50.0, help="slow candidates' answer delay")
    ap.add_argument(
        "--scenarios",
        type=lambda v: {"direct", *v.split(",")},
        default=set(SCENARIOS),
        help="comma-separated subset to run (direct always runs), e.g. proxy,downcands",
    )
    ap.add_argument(
        "--proxy-cpu",
        type=int,
        choices=(PROXY_CPU, LOAD_CPU),
        default=PROXY_CPU,
        help=f"CPU of the proxy; {LOAD_CPU} puts it beside nginx and the load generator, which\n"
        "removes cross-CPU wake-ups from the latency (use with --no-wrk)",
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results/proxy_overhead.json"))
    ap.add_argument("--serve-slow", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--serve-relay", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    ap.add_argument("--relay-kind", choices=tuple(FLOORS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_slow:
        serve_slow(args.serve_slow, args.slow_ms)
        return
    if args.serve_relay:
        serve_relay(args.serve_relay, args.upstream, args.relay_kind)
        return
    ensure_tools()
    pin_to_load_cpu()
    summary = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(report(summary))


def report(s: dict[str, Any]) -> str:
    """A short human-readable digest of the summary (the JSON has everything)."""
    sc = s["scenarios"]

    def f(name: str, metric: str, fmt: str = "{:.3f}") -> str:
        m = sc[name].get(metric)
        if m is None:
            return "-"
        return f"{fmt.format(m['median'])} [{fmt.format(m['min'])}-{fmt.format(m['max'])}]"

    lines = [f"machine: {s['machine']['cpu']}, {s['machine']['cores']} cores; "
             f"load {s['machine']['loadavg_per_round']}"]  # fmt: skip
    lines.append(f"{'scenario':<10} {'p50 ms':<22} {'p99 ms':<22} {'added p50':<22} "
                 f"{'added p99':<22} {'max req/s':<24}")  # fmt: skip
    for name in sc:
        lines.append(
            f"{name:<10} {f(name, 'p50'):<22} {f(name, 'p99'):<22} {f(name, 'added_p50'):<22} "
            f"{f(name, 'added_p99'):<22} {f(name, 'max_rps', '{:.0f}'):<24}"
        )
    for name in ("mirror10", "slowcands", "downcands"):
        if name in sc:
            lines.append(f"{name} p99 / proxy p99: {f(name, 'p99_vs_proxy')}")
    for name, e in s.get("pooled", {}).items():
        parts = [
            f"{k} {e[k]['value']:.3f} [{e[k]['ci95'][0]:.3f}-{e[k]['ci95'][1]:.3f}]"
            for k in ("p50", "p99", "added_p50", "added_p99", "p99_vs_proxy")
            if k in e
        ]
        lines.append(f"pooled {name} (n={e['n']}): " + ", ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
