"""Server-sent events through the proxy: unbuffered, exact, and cancelled with the client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from tests.proxy.conftest import (
    STREAM_PIECES,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    chat_chunk,
    eventually,
    sse,
    stalled_stream,
)

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Stream please."}]


async def test_async_sdk_stream_is_exact(proxy: RunningProxy) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk", max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    await client.close()
    assert pieces == STREAM_PIECES
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 6


async def test_sync_sdk_stream_is_exact(proxy: RunningProxy) -> None:
    def call() -> list[str]:
        with openai.OpenAI(base_url=proxy.base_url, api_key="sk", max_retries=0) as client:
            stream = client.chat.completions.create(
                model="gpt-test", messages=MESSAGES, stream=True
            )
            return [
                c.choices[0].delta.content
                for c in stream
                if c.choices and c.choices[0].delta.content
            ]

    assert await asyncio.to_thread(call) == STREAM_PIECES


async def test_stream_bytes_and_headers_are_relayed_unchanged(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession() as s:
        async with s.post(upstream.base_url + "/chat/completions", json=body) as direct:
            direct_bytes = await direct.read()
        async with s.post(proxy.base_url + "/chat/completions", json=body) as via:
            assert via.headers["Content-Type"] == "text/event-stream"
            assert via.headers["x-request-id"] == "req_stream_1"
            assert "x-shadow-request-id" in via.headers
            via_bytes = await via.read()
    assert via_bytes == direct_bytes
    assert via_bytes.endswith(b"data: [DONE]\n\n")


async def test_first_chunk_arrives_while_upstream_is_still_streaming(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """No buffering: the client holds the first event long before production sends its last."""
    upstream.chunk_delay_s = 0.3  # ~1.8 s between the first and the last event
    last_sent: list[float] = []
    original = upstream.stream_chat

    async def timed(request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
        resp = await original(request, payload)
        last_sent.append(time.perf_counter())
        return resp

    upstream.stream_chat = timed  # type: ignore[method-assign]

    async def ttft(base_url: str) -> tuple[float, float, list[float]]:
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        arrivals: list[float] = []
        async with aiohttp.ClientSession() as s:
            t0 = time.perf_counter()
            async with s.post(base_url + "/chat/completions", json=body) as r:
                async for _ in r.content.iter_any():
                    arrivals.append(time.perf_counter())
        return arrivals[0] - t0, arrivals[0], arrivals

    direct_ttft, _, _ = await ttft(upstream.base_url)
    proxy_ttft, first_at, arrivals = await ttft(proxy.base_url)
    # Causal, not a tight timing: the first event reached the client before production
    # had even produced its last one (1.5 s of sleeps later).
    assert first_at < last_sent[-1] - 0.5
    # Side by side with the upstream's own time to first byte, with a generous margin.
    assert proxy_ttft < direct_ttft + 0.5
    # Events arrive spread out as production sent them, not in one burst at the end.
    assert len(arrivals) >= len(STREAM_PIECES) // 2
    assert arrivals[-1] - arrivals[0] > 1.0


async def test_client_disconnect_mid_stream_cancels_upstream(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    # Production goes quiet after its first event: only the disconnect itself can end this.
    proxy = await start_proxy(upstream.base_url, production={"read_timeout_s": 60})
    started = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse(chat_chunk("first")))
        started.set()
        await asyncio.sleep(60)
        return resp

    upstream.handlers[("POST", "/v1/chat/completions")] = endless
    assert upstream.server is not None and upstream.server.runner is not None
    upstream_server = upstream.server.runner.server
    assert upstream_server is not None
    baseline_tasks = len(asyncio.all_tasks())

    session = aiohttp.ClientSession()
    resp = await session.post(
        proxy.base_url + "/chat/completions", json={"model": "m", "stream": True}
    )
    assert resp.status == 200
    assert (await resp.content.readany()).startswith(b"data: ")
    await started.wait()
    assert upstream.active == 1
    # The client goes away mid-stream.
    resp.close()
    await session.close()

    await eventually(lambda: upstream.active == 0, within=3)
    assert upstream.cancelled == 1
    # The proxy closed its upstream connection rather than pooling a half-read one ...
    await eventually(lambda: len(upstream_server.connections) == 0)
    # ... and nothing is left running in the proxy.
    await eventually(
        lambda: proxy.registry.get_sample_value("shadoweval_http_requests_in_flight") == 0
    )
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline_tasks)
    assert (
        proxy.registry.get_sample_value("shadoweval_upstream_errors_total", {"kind": "dropped"})
        == 1
    )


async def test_client_disconnect_before_headers_cancels_upstream(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.base_url, production={"read_timeout_s": 60})
    entered = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        entered.set()
        await asyncio.sleep(30)
        return web.json_response({})

    upstream.handlers[("POST", "/v1/embeddings")] = slow
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(proxy.base_url + "/embeddings", json={"input": "x"}))
        await entered.wait()
        task.cancel()
    await eventually(lambda: upstream.cancelled == 1, within=3)
    await eventually(
        lambda: proxy.registry.get_sample_value("shadoweval_http_requests_in_flight") == 0
    )


async def test_upstream_failing_mid_stream_cuts_the_client_stream(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.handlers[("POST", "/v1/chat/completions")] = stalled_stream("partial")
    # Long enough that a loaded machine still relays the first chunk (production then stalls).
    proxy = await start_proxy(upstream.base_url, production={"read_timeout_s": 2.0})
    received = b""
    async with (
        aiohttp.ClientSession() as s,
        s.post(proxy.base_url + "/chat/completions", json={"model": "m", "stream": True}) as r,
    ):
        assert r.status == 200
        try:
            async for chunk in r.content.iter_any():
                received += chunk
            cut = False
        except aiohttp.ClientPayloadError:
            cut = True
    # The client saw what production sent, then an unfinished stream, never a clean end.
    assert received == sse(chat_chunk("partial"))
    assert cut
    assert (
        proxy.registry.get_sample_value("shadoweval_upstream_errors_total", {"kind": "timeout"})
        == 1
    )


async def test_openai_sdk_sees_a_cut_stream_as_an_error(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.handlers[("POST", "/v1/chat/completions")] = stalled_stream("partial")
    # Long enough that a loaded machine still relays the first chunk (production then stalls).
    proxy = await start_proxy(upstream.base_url, production={"read_timeout_s": 2.0})
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk", max_retries=0)
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    got: list[str] = []
    try:
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
        errored = False
    except openai.APIError:
        errored = True
    except Exception:  # httpx surfaces a truncated chunked body as its own error type
        errored = True
    await client.close()
    assert got == ["partial"]
    assert errored
