"""Shared fixtures for the proxy tests: fake OpenAI-compatible upstreams and a live proxy.

Everything runs on loopback in the test's own event loop: the fake production model is an
aiohttp test server whose behaviour a test can replace per route, and the proxy is the real
app served by the same runner `shadoweval serve` uses, on a free port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from proxy.app import create_app
from proxy.config import Settings, parse_settings
from proxy.server import make_runner, start_site

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHAT_TEXT = "Hello from the production model."
STREAM_PIECES = ["Hel", "lo", " from", " the", " stream", "."]


@dataclass
class Seen:
    """One request as the fake upstream received it."""

    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    peer: Any = None  # the sending socket's (host, port): tells connections apart


def chat_completion(text: str = CHAT_TEXT, model: str = "gpt-test") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else orjson.dumps(obj).decode()
    return f"data: {data}\n\n".encode()


def chat_chunk(
    content: str | None, finish: str | None = None, model: str = "gpt-test"
) -> dict[str, Any]:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


async def hop_by_hop_answer(request: web.Request) -> web.StreamResponse:
    """A production answer carrying hop-by-hop headers (and one its Connection header names)
    beside end-to-end ones, a repeated header included."""
    resp = web.Response(body=b"{}", content_type="application/json")
    resp.headers["Connection"] = "X-Hop-Only"
    resp.headers["X-Hop-Only"] = "1"
    resp.headers["Keep-Alive"] = "timeout=5"
    resp.headers["Proxy-Authenticate"] = "Basic"
    resp.headers["Trailer"] = "X-Checksum"
    resp.headers["X-End-To-End"] = "2"
    resp.headers.add("Set-Cookie", "a=1")
    resp.headers.add("Set-Cookie", "b=2")
    return resp


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Poll `check` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def stalled_stream(text: str) -> Handler:
    """A production handler that starts a stream, sends one chunk of `text`, then stalls."""

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse(chat_chunk(text)))
        await asyncio.sleep(30)
        return resp

    return stall


class FakeUpstream:
    """An OpenAI-compatible fake; `handlers[(method, path)]` may be replaced by a test."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.chunk_delay_s = 0.0
        self.active = 0  # handlers currently running
        self.cancelled = 0  # handlers cancelled because the proxy went away
        self.handlers: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/v1/responses"): self.responses,
            ("GET", "/v1/models"): self.models,
        }
        self.server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1"))

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path_qs,
                dict(request.headers),
                body,
                time.perf_counter(),
                request.transport.get_extra_info("peername") if request.transport else None,
            )
        )
        handler = self.handlers.get((request.method, request.path), self.echo)
        self.active += 1
        try:
            return await handler(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    async def echo(self, request: web.Request) -> web.StreamResponse:
        """Any other route: say what arrived, so pass-through can be checked."""
        seen = self.seen[-1]
        return web.json_response(
            {"method": seen.method, "path_qs": seen.path_qs, "body": seen.body.decode("latin-1")},
            headers={"x-echo": "1"},
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = orjson.loads(self.seen[-1].body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return web.json_response(
                {
                    "error": {
                        "message": "We could not parse the JSON body of your request.",
                        "type": "invalid_request_error",
                        "code": None,
                    }
                },
                status=400,
            )
        if payload.get("stream"):
            return await self.stream_chat(request, payload)
        return web.json_response(
            chat_completion(model=payload.get("model", "gpt-test")),
            headers={"x-request-id": "req_upstream_1"},
        )

    async def stream_chat(
        self, request: web.Request, payload: dict[str, Any]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-request-id": "req_stream_1"}
        )
        await resp.prepare(request)
        model = payload.get("model", "gpt-test")
        for piece in STREAM_PIECES:
            await resp.write(sse(chat_chunk(piece, model=model)))
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        await resp.write(sse(chat_chunk(None, "stop", model=model)))
        if (payload.get("stream_options") or {}).get("include_usage"):
            await resp.write(
                sse(
                    {
                        **chat_chunk(None, model=model),
                        "choices": [],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
                    }
                )
            )
        await resp.write(sse("[DONE]"))
        await resp.write_eof()
        return resp

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1700000000,
                "model": "gpt-test-instruct",
                "choices": [
                    {"index": 0, "text": " world", "finish_reason": "stop", "logprobs": None}
                ],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            }
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
                "model": "emb-test",
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "id": "resp_1",
                "object": "response",
                "created_at": 1700000000,
                "model": "gpt-test",
                "status": "completed",
                "output": [
                    {
                        "type": "message",
                        "id": "msg_1",
                        "status": "completed",
                        "role": "assistant",
                        "content": [
                            {
                                "type": "output_text",
                                "text": "Responses API says hi.",
                                "annotations": [],
                            }
                        ],
                    }
                ],
                "usage": {"input_tokens": 4, "output_tokens": 5, "total_tokens": 9},
            }
        )

    async def models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "gpt-test", "object": "model", "created": 0, "owned_by": "test"}],
            }
        )


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", fake.dispatch)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.server = server
    yield fake
    await server.close()


def make_settings(production_url: str, data_dir: Path, **sections: Any) -> Settings:
    """Settings for a test proxy: loopback, quiet, a lake in `data_dir`; sections merge in."""
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5},
        "production": {
            "base_url": production_url,
            "connect_timeout_s": 2,
            "read_timeout_s": 5,
            "total_timeout_s": 10,
        },
        # The lake writer as a thread: a writer process per test proxy would cost each test
        # its start-up (~1.5 s of imports). The process is tested in lake/test_writer_process.py,
        # test_recording_e2e.py and, as `shadoweval serve` runs it, test_server.py.
        "storage": {"data_dir": str(data_dir), "flush_interval_s": 0.2, "writer_process": False},
        "logging": {"format": "json", "level": "warning"},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **value}
        else:
            raw[name] = value
    return parse_settings(raw, "test")


@dataclass
class RunningProxy:
    """A proxy app served on a free loopback port."""

    app: web.Application
    settings: Settings
    port: int
    registry: CollectorRegistry
    runner: web.AppRunner = field(repr=False)
    site: web.BaseSite | None = field(default=None, repr=False)
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[ProxyFactory]:
    """`await start_proxy(production_url, **sections)` → a running proxy, stopped at teardown."""
    running: list[RunningProxy] = []

    async def start(production_url: str, **sections: Any) -> RunningProxy:
        settings = make_settings(production_url, tmp_path / f"lake{len(running)}", **sections)
        registry = CollectorRegistry(auto_describe=True)
        app = create_app(settings, registry=registry)
        runner = make_runner(app, settings)
        await runner.setup()
        site = await start_site(runner, settings, "127.0.0.1", 0)
        port = runner.addresses[0][1]
        proxy = RunningProxy(app, settings, port, registry, runner, site)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        await proxy.stop()


@pytest.fixture
async def proxy(upstream: FakeUpstream, start_proxy: ProxyFactory) -> RunningProxy:
    """A proxy in front of the default fake upstream."""
    return await start_proxy(upstream.base_url)
