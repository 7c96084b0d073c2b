"""`shadoweval simulate`: serve simulated OpenAI-compatible models, no keys and no network needed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from shadoweval.simulator.scenario import load_scenario
from shadoweval.simulator.server import start_simulator


async def _serve(args: argparse.Namespace) -> None:
    scenario = load_scenario(args.config)
    running = await start_simulator(scenario, args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"simulated models at {running.base_url} (Ctrl-C to stop)", flush=True)
    for m in scenario.models:
        acc = f"accuracy {m.accuracy:.2f}"
        ttft = f"TTFT median {m.latency.ttft_ms.median:.0f} ms"
        print(f"  {m.name:<16} {m.role:<10} {acc}, {ttft}, {m.calibration.profile}", flush=True)
    try:
        await stop.wait()
    finally:
        await running.close()


def _run(args: argparse.Namespace) -> int:
    asyncio.run(_serve(args))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="serve simulated OpenAI-compatible models (for demos and tests)",
        description=(
            "Serve the models of a simulator scenario on one OpenAI-compatible endpoint "
            "(POST /v1/chat/completions, GET /v1/models); the request's `model` picks one. "
            "Without --config, the embedded default scenario (see configs/simulator.yaml)."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="scenario YAML (default: the embedded one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8090, help="port to listen on (default 8090; 0 = any free)"
    )
    p.set_defaults(func=_run)
