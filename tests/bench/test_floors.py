"""The benchmark's own relays work: each floor of `bench/proxy_overhead.py` answers a
completion request through to its upstream, as the bench drives it (its own process)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.proxy_overhead import BODY, COMPLETION, FLOORS, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", sorted(FLOORS))
async def test_each_floor_relay_answers_with_its_upstreams_completion(kind: str) -> None:
    seen: list[tuple[str, bytes]] = []

    async def complete(request: web.Request) -> web.Response:
        seen.append((request.path, await request.read()))
        return web.Response(text=COMPLETION, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", complete)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    port = free_port()
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.proxy_overhead", "--serve-relay", str(port),
        "--relay-kind", kind, "--upstream", str(upstream.make_url("/v1")), cwd=ROOT,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(600):  # until it listens (imports take a while on a busy machine)
                try:
                    async with s.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        data=BODY,
                        headers={"Content-Type": "application/json"},
                    ) as r:
                        status, text = r.status, await r.text()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail(f"the {kind} relay never listened")
        assert status == 200 and json.loads(text) == json.loads(COMPLETION)
        assert seen == [("/v1/chat/completions", BODY.encode())]
    finally:
        relay.terminate()
        await relay.wait()
        await upstream.close()
