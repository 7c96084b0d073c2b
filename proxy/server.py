"""Run the proxy: one process, or N worker processes sharing one port.

SIGTERM or SIGINT starts a graceful shutdown: stop accepting connections, let in-flight
requests finish within `server.shutdown_grace_s`, drain or count shadow calls in what is
left of that time, flush every record, exit 0. With `--workers N` each worker is its own
process (own event loop, upstream pool, recorder and lake writer id) bound to the same
port with SO_REUSEPORT, so the kernel spreads connections across them; the parent only
starts them, forwards signals and reports how they ended. Whichever worker answers
/metrics serves all of them, summed (`proxy.worker_metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from proxy.app import LIFECYCLE, METRICS, SERVICE, create_app
from proxy.config import Settings
from proxy.errors import ConfigError, ShadowevalError
from proxy.front_site import Front, FrontSite
from proxy.log import access_lines, configure_logging
from proxy.worker_metrics import forget

log = structlog.get_logger("shadoweval.server")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (faster I/O), else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return None
    return uvloop.new_event_loop


# Young-generation collections every 20,000 net allocations instead of 700: a request
# allocates a few hundred tracked objects, and at the default each full collection walked
# every object of the process while all in-flight requests waited (~64 ms at saturation).
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Once started: move everything built so far out of the collector's sight, collect less often.

    Objects alive at start-up (modules, settings, compiled patterns, the app) live for the
    whole process; `gc.freeze` stops collections from traversing them again and again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner both `serve` and the tests use: our access log, graceful shutdown,
    and a handler cancelled when its client disconnects (which cancels the upstream call)."""
    return web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.server.shutdown_grace_s,
        handler_cancellation=True,
    )


async def start_site(
    runner: web.AppRunner,
    settings: Settings,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
) -> web.BaseSite:
    """Listen on host:port (after `runner.setup()`): the lean front, or aiohttp alone."""
    app = runner.app
    site: web.BaseSite
    if settings.server.lean_front:
        assert runner.server is not None
        front = Front(
            app,
            runner.server,
            app[SERVICE],
            app[METRICS],
            access_lines(settings),
            write_timeout_s=settings.server.client_write_timeout_s,
        )
        site = FrontSite(
            runner,
            front,
            host,
            port,
            grace_s=settings.server.shutdown_grace_s,
            reuse_port=reuse_port,
        )
    else:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
    await site.start()
    return site


PARENT_CHECK_EVERY_S = 1.0


def watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Set `stop` once the process that started this worker is gone.

    A worker's parent only supervises; if it is killed outright (SIGKILL, the OOM killer),
    nothing forwards a SIGTERM, and a worker left alone would go on serving the port by
    itself, beside whatever the supervisor starts next. So each worker checks, every
    second, that its parent is still the one that started it, and otherwise shuts down as
    on SIGTERM: drain, flush, exit. (Polling `getppid` works on every POSIX system and
    costs one system call a second.)
    """
    loop = asyncio.get_running_loop()

    def check() -> None:
        if os.getppid() != parent_pid:
            log.warning("parent process gone", parent_pid=parent_pid)
            stop.set()
        else:
            loop.call_later(PARENT_CHECK_EVERY_S, check)

    loop.call_later(PARENT_CHECK_EVERY_S, check)


async def serve(
    settings: Settings,
    *,
    reuse_port: bool = False,
    shared_metrics: tuple[Path, int] | None = None,
    parent_pid: int | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or, in a worker, until its parent is gone), then shut down
    gracefully."""
    app = create_app(settings, shared_metrics=shared_metrics)
    runner = make_runner(app, settings)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        try:
            await start_site(
                runner,
                settings,
                settings.server.host,
                settings.server.port,
                reuse_port=reuse_port,
            )
        except OSError as exc:
            where = f"{settings.server.host}:{settings.server.port}"
            raise ShadowevalError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        if parent_pid is not None:
            watch_parent(parent_pid, stop)
        tune_gc()
        log.info(
            "listening",
            host=settings.server.host,
            port=settings.server.port,
            production=settings.production.base_url,
            candidates=[c.name for c in settings.candidates if c.enabled],
        )
        await stop.wait()
        grace = settings.server.shutdown_grace_s
        log.info("shutting down", grace_s=grace)
        app[LIFECYCLE].begin_drain(grace)
    finally:
        await runner.cleanup()
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    log.info("stopped")


def run_single(
    settings: Settings,
    *,
    reuse_port: bool = False,
    shared_metrics: tuple[Path, int] | None = None,
    parent_pid: int | None = None,
) -> int:
    """Run one proxy process in the foreground; 0 after a graceful shutdown."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(
            serve(
                settings,
                reuse_port=reuse_port,
                shared_metrics=shared_metrics,
                parent_pid=parent_pid,
            )
        )
    return 0


def worker_settings(settings: Settings, index: int) -> Settings:
    """A worker's settings: a configured lake writer id gets the worker's index appended
    (without one, each process already names its segments after its pid)."""
    writer_id = settings.storage.writer_id
    if writer_id is None:
        return settings
    storage = settings.storage.model_copy(update={"writer_id": f"{writer_id}-w{index}"})
    return settings.model_copy(update={"storage": storage})


def _worker_main(settings: Settings, index: int, metrics_dir: Path, parent_pid: int) -> None:
    """Entry point of one worker process (spawned, so it starts from a clean interpreter)."""
    configure_logging(settings.logging)
    structlog.contextvars.bind_contextvars(worker=index)
    try:
        code = run_single(
            settings,
            reuse_port=True,
            shared_metrics=(metrics_dir, index),
            parent_pid=parent_pid,
        )
    except ShadowevalError as exc:
        log.error("worker cannot start", error=str(exc))
        code = 2
    if os.getppid() != parent_pid:  # the parent is gone and will not clean up after the run
        forget(metrics_dir, index)
    sys.exit(code)


def run_workers(settings: Settings, workers: int) -> int:
    """Run `workers` processes on one port; forward SIGTERM/SIGINT; 0 if all ended cleanly."""
    if settings.server.port == 0:
        raise ConfigError("server.port: must be a fixed port (not 0) when running several workers")
    ctx = multiprocessing.get_context("spawn")
    # Where the workers share their metrics, so that /metrics shows all of them.
    metrics_dir = Path(tempfile.mkdtemp(prefix="shadoweval-metrics-"))
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(worker_settings(settings, i), i, metrics_dir, os.getpid()),
            name=f"shadoweval-worker-{i}",
        )
        for i in range(workers)
    ]
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        """Forward a stop signal to every started worker, once they exist."""
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()  # SIGTERM: each worker shuts down gracefully

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        for p in procs:
            if stopping:
                break  # a signal arrived while starting: start no more
            p.start()
        started = [p for p in procs if p.pid is not None]
        if stopping:
            on_signal(signal.SIGTERM, None)
        log.info(
            "workers started",
            workers=workers,
            pids=[p.pid for p in started],
            metrics_dir=str(metrics_dir),
        )
        failed = False
        while any(p.exitcode is None for p in started):
            alive = [p.sentinel for p in started if p.exitcode is None]
            multiprocessing.connection.wait(alive, timeout=1.0)
            for p in started:
                if p.exitcode is not None and p.exitcode != 0 and not failed:
                    failed = True
                    log.error("worker exited", worker=p.name, exitcode=p.exitcode)
                    if not stopping:
                        # A crashed worker means lost capacity: stop all, let the supervisor restart.
                        on_signal(signal.SIGTERM, None)
        for p in started:
            p.join()
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def run(settings: Settings, *, workers: int | None = None) -> int:
    """Run the proxy as configured (`workers` overrides `server.workers`)."""
    n = workers if workers is not None else settings.server.workers
    if n <= 1:
        return run_single(settings)
    return run_workers(settings, n)
