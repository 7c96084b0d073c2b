"""Serving the labelling app: start it on an address, print where it is, stop on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from aiohttp import web

from analysis.labelui.app import STATE, create_labelui_app
from analysis.labelui.security import check_binding
from proxy.errors import InputError


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving `app`; returns the runner and the bound port (useful with port 0)."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port


def address(host: str, port: int, token: str | None) -> str:
    """The address to open in a browser (with the token, which the page then drops)."""
    shown = f"[{host}]" if ":" in host else host
    if shown in ("0.0.0.0", "[::]", ""):
        shown = "127.0.0.1"
    suffix = f"/?token={quote(token, safe='')}" if token else "/"
    return f"http://{shown}:{port}{suffix}"


async def serve(
    data_dir: str | Path,
    *,
    eval_set: str | None,
    host: str,
    port: int,
    token: str | None,
    lease_s: float,
    out: TextIO = sys.stdout,
    stop: Callable[[], asyncio.Event] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or the event `stop()` returns is set)."""
    check_binding(host, token)
    app = create_labelui_app(data_dir, eval_set, token, host=host, lease_s=lease_s)
    runner, bound = await start(app, host, port)
    done = stop() if stop else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, done.set)
    state = app[STATE]
    total = len(state.queue.snapshot.items)
    print(
        f"labelling eval set {state.eval_set!r} ({total} items) at {address(host, bound, token)}",
        file=out,
        flush=True,
    )
    try:
        await done.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await runner.cleanup()
