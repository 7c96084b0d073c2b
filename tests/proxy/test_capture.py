"""What the live path records: `requests` rows and production's `responses` rows in the lake,
and which requests reach the mirror."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai.types.chat import ChatCompletionMessageParam

import proxy.capture as capture_module
from proxy.lake.reader import connect
from proxy.upstream_conn import Connection
from tests.proxy.conftest import (
    CHAT_TEXT,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    stalled_stream,
)

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Route tickets."},
    {"role": "user", "content": "My card was charged twice."},
]
PRICES = {"price_input_per_mtok": 2.5, "price_output_per_mtok": 10.0}


def rows(proxy: RunningProxy, dataset: str, order: str = "request_id") -> list[dict[str, Any]]:
    con = connect(proxy.settings.storage.data_dir)
    cur = con.execute(f"SELECT * FROM {dataset} ORDER BY {order}")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def sha(part: Any) -> str:
    return hashlib.sha256(orjson.dumps(part, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def post(
    url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes, str]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=hdrs) as r:
        return r.status, await r.read(), r.headers["x-shadow-request-id"]


async def test_chat_request_and_production_answer_are_recorded(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.base_url, production=PRICES)
    body = {"model": "gpt-test", "messages": MESSAGES, "temperature": 0}
    status, _, rid = await post(
        proxy.base_url + "/chat/completions",
        body,
        {
            "x-shadow-request-id": "ticket-1",
            "x-session-id": "sess-9",
            "x-shadow-tags": "billing, fr",
        },
    )
    assert status == 200 and rid == "ticket-1"
    await proxy.stop()  # flushes the recorder

    [req] = rows(proxy, "requests")
    assert req["request_id"] == "ticket-1"
    assert req["route"] == "/v1/chat/completions" and req["method"] == "POST"
    assert req["model"] == "gpt-test" and req["stream"] is False
    assert orjson.loads(req["body"]) == body
    assert req["prompt_hash"] == sha(MESSAGES)
    assert req["session_id"] == "sess-9"
    assert list(req["tags"]) == ["billing", "fr"]
    assert req["sample_rate"] == 0.0 and req["mirrored"] is False
    assert req["content_omitted"] is False
    assert abs(req["received_at"] - datetime.now(UTC)) < timedelta(minutes=5)

    [resp] = rows(proxy, "responses")
    assert resp["request_id"] == "ticket-1"
    assert (resp["target"], resp["source"], resp["status"], resp["error"]) == (
        "production",
        "live",
        200,
        None,
    )
    assert resp["model"] == "gpt-test"
    assert resp["output_text"] == CHAT_TEXT and resp["finish_reason"] == "stop"
    assert (resp["prompt_tokens"], resp["completion_tokens"]) == (11, 7)
    assert resp["cost_usd"] == pytest.approx((11 * 2.5 + 7 * 10.0) / 1e6)
    assert resp["stream"] is False and resp["attempt"] == 0
    assert resp["ttft_ms"] is None and resp["latency_ms"] > 0
    assert resp["started_at"] >= req["received_at"]


async def test_streamed_answer_is_assembled_with_ttft(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.chunk_delay_s = 0.1
    proxy = await start_proxy(upstream.base_url)
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk", max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    got = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await client.close()
    await proxy.stop()
    [req] = rows(proxy, "requests")
    assert req["stream"] is True
    [resp] = rows(proxy, "responses")
    assert resp["output_text"] == got == "Hello from the stream."
    assert resp["finish_reason"] == "stop"
    assert (resp["prompt_tokens"], resp["completion_tokens"]) == (5, 6)
    assert resp["stream"] is True
    # TTFT is the first chunk, well before the end of the stream (six 0.1 s pauses).
    assert 0 < resp["ttft_ms"] < resp["latency_ms"] - 300


async def test_every_recorded_route_gets_its_rows(proxy: RunningProxy) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk", max_retries=0)
    await client.completions.create(model="gpt-test-instruct", prompt="hello")
    await client.embeddings.create(model="emb-test", input=["a", "b"])
    await client.responses.create(model="gpt-test", input="hi", instructions="be brief")
    await client.models.list()  # pass-through: not recorded
    async with aiohttp.ClientSession() as s, s.post(proxy.base_url + "/files", data=b"x") as r:
        assert r.status == 200  # pass-through: not recorded
    await client.close()
    await proxy.stop()
    reqs = {r["route"]: r for r in rows(proxy, "requests")}
    assert set(reqs) == {"/v1/completions", "/v1/embeddings", "/v1/responses"}
    assert reqs["/v1/completions"]["prompt_hash"] == sha("hello")
    assert reqs["/v1/embeddings"]["prompt_hash"] == sha(["a", "b"])
    assert reqs["/v1/responses"]["prompt_hash"] == sha({"input": "hi", "instructions": "be brief"})
    by_id = {r["request_id"]: r for r in rows(proxy, "responses")}
    assert len(by_id) == 3
    completion = by_id[reqs["/v1/completions"]["request_id"]]
    assert completion["output_text"] == " world" and completion["completion_tokens"] == 1
    emb = by_id[reqs["/v1/embeddings"]["request_id"]]
    assert emb["output_text"] is None and emb["prompt_tokens"] == 3 and emb["status"] == 200
    resp = by_id[reqs["/v1/responses"]["request_id"]]
    assert resp["output_text"] == "Responses API says hi."
    assert (resp["prompt_tokens"], resp["completion_tokens"]) == (4, 5)


async def test_failures_are_recorded_with_their_kind(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    async def limited(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "error": {
                    "message": "Rate limit reached for sk-abc...xyz",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
            status=429,
        )

    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response()

    upstream.handlers[("POST", "/v1/chat/completions")] = limited
    upstream.handlers[("POST", "/v1/completions")] = hang
    # Long enough that a loaded machine still relays the 429 (the other route hangs for 30 s).
    proxy = await start_proxy(upstream.base_url, production={"read_timeout_s": 2.0})
    dead = await start_proxy("http://127.0.0.1:9/v1")
    assert (await post(proxy.base_url + "/chat/completions", {"model": "m", "messages": MESSAGES}))[
        0
    ] == 429
    assert (await post(proxy.base_url + "/completions", {"model": "m", "prompt": "p"}))[0] == 504
    assert (await post(dead.base_url + "/chat/completions", {"model": "m", "messages": MESSAGES}))[
        0
    ] == 502
    await proxy.stop()
    await dead.stop()
    by_route = {}
    for req, resp in zip(rows(proxy, "requests"), rows(proxy, "responses"), strict=True):
        by_route[req["route"]] = resp
    assert (
        by_route["/v1/chat/completions"]["status"],
        by_route["/v1/chat/completions"]["error"],
    ) == (429, "http")
    # The short code, never the message (which may quote a key).
    assert by_route["/v1/chat/completions"]["error_detail"] == "rate_limit_exceeded"
    assert (by_route["/v1/completions"]["status"], by_route["/v1/completions"]["error"]) == (
        None,
        "timeout",
    )
    assert by_route["/v1/completions"]["latency_ms"] >= 250
    [unreachable] = rows(dead, "responses")
    assert (unreachable["status"], unreachable["error"]) == (None, "connect")
    assert len(rows(dead, "requests")) == 1


@pytest.mark.parametrize("how", ["header", "config"])
async def test_content_can_be_omitted(
    upstream: FakeUpstream, start_proxy: ProxyFactory, how: str
) -> None:
    if how == "header":
        proxy = await start_proxy(upstream.base_url)
        headers = {"x-shadow-omit": "content"}
    else:
        proxy = await start_proxy(upstream.base_url, storage={"store_content": False})
        headers = {}
    await post(
        proxy.base_url + "/chat/completions", {"model": "gpt-test", "messages": MESSAGES}, headers
    )
    await proxy.stop()
    [req] = rows(proxy, "requests")
    assert req["body"] is None and req["content_omitted"] is True
    assert req["prompt_hash"] == sha(MESSAGES) and req["model"] == "gpt-test"
    [resp] = rows(proxy, "responses")
    assert resp["output_text"] is None and resp["logprobs"] is None
    assert resp["completion_tokens"] == 7 and resp["status"] == 200


async def test_malformed_body_is_recorded_and_never_mirrored(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.base_url, sampling={"rate": 1.0})
    status, _, _ = await post(proxy.base_url + "/chat/completions", b'{"model": "m", "messages": [')
    assert status == 400
    await proxy.stop()
    [req] = rows(proxy, "requests")
    assert req["body"] == '{"model": "m", "messages": ['
    assert req["model"] is None and req["prompt_hash"] is None
    assert req["mirrored"] is False and req["sample_rate"] == 0.0
    [resp] = rows(proxy, "responses")
    assert (resp["status"], resp["error"]) == (400, "http")


async def test_client_disconnect_mid_stream_is_recorded_as_dropped(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    upstream.handlers[("POST", "/v1/chat/completions")] = stalled_stream("partial answer")
    proxy = await start_proxy(upstream.base_url, production={"read_timeout_s": 60})
    session = aiohttp.ClientSession()
    resp = await session.post(
        proxy.base_url + "/chat/completions",
        json={"model": "m", "stream": True, "messages": MESSAGES},
    )
    await resp.content.readany()
    resp.close()
    await session.close()
    for _ in range(100):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.05)
    await proxy.stop()
    [row] = rows(proxy, "responses")
    assert (row["status"], row["error"], row["error_detail"]) == (
        200,
        "dropped",
        "client disconnected",
    )
    assert row["output_text"] == "partial answer"


@pytest.fixture
async def candidate() -> AsyncIterator[FakeUpstream]:
    """A second fake model, standing in for a candidate."""
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.dispatch)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.server = server
    yield fake
    await server.close()


async def test_mirrored_requests_reach_candidates_only_after_production_answered(
    upstream: FakeUpstream, candidate: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    original = upstream.chat

    async def held(request: web.Request) -> web.StreamResponse:
        entered.set()
        await release.wait()
        return await original(request)

    upstream.handlers[("POST", "/v1/chat/completions")] = held
    proxy = await start_proxy(
        upstream.base_url,
        sampling={"rate": 1.0},
        candidates=[
            {
                "name": "small",
                "base_url": candidate.base_url,
                "model": "small-model",
                "api_key": "sk-candidate",
            }
        ],
    )
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-client-secret", max_retries=0)
    call = asyncio.create_task(client.chat.completions.create(model="gpt-test", messages=MESSAGES))
    await entered.wait()
    await asyncio.sleep(0.2)
    assert candidate.seen == []  # production has not answered yet
    release.set()
    answer = await call
    assert answer.choices[0].message.content == CHAT_TEXT
    for _ in range(200):
        if candidate.seen:
            break
        await asyncio.sleep(0.02)
    await client.close()
    await proxy.stop()
    [seen] = candidate.seen
    assert orjson.loads(seen.body)["model"] == "small-model"
    assert orjson.loads(seen.body)["messages"] == MESSAGES
    # The client's credentials go to production only.
    assert seen.headers["Authorization"] == "Bearer sk-candidate"
    assert "sk-client-secret" not in str(seen.headers)
    assert upstream.seen[0].headers["Authorization"] == "Bearer sk-client-secret"
    [req] = rows(proxy, "requests")
    assert req["mirrored"] is True and req["sample_rate"] == 1.0
    targets = {r["target"]: r for r in rows(proxy, "responses", order="target")}
    assert set(targets) == {"production", "small"}
    assert targets["small"]["request_id"] == req["request_id"]


async def test_unsampled_requests_are_not_mirrored(
    upstream: FakeUpstream, candidate: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(
        upstream.base_url,
        sampling={"rate": 0.0},
        candidates=[{"name": "small", "base_url": candidate.base_url, "model": "small-model"}],
    )
    for _ in range(5):
        await post(proxy.base_url + "/chat/completions", {"model": "m", "messages": MESSAGES})
    await proxy.stop()
    assert candidate.seen == []
    assert [r["target"] for r in rows(proxy, "responses")] == ["production"] * 5


async def test_disconnect_before_production_answers_is_recorded(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    entered = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        entered.set()
        await asyncio.sleep(30)
        return web.json_response({})

    upstream.handlers[("POST", "/v1/chat/completions")] = slow
    proxy = await start_proxy(upstream.base_url, production={"read_timeout_s": 60})
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(
            s.post(proxy.base_url + "/chat/completions", json={"model": "m", "messages": MESSAGES})
        )
        await entered.wait()
        task.cancel()
    for _ in range(100):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.05)
    await proxy.stop()
    [row] = rows(proxy, "responses")
    assert (row["status"], row["error"], row["error_detail"]) == (
        None,
        "dropped",
        "client disconnected",
    )


async def test_unreachable_production_is_not_mirrored(
    candidate: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(
        "http://127.0.0.1:9/v1",
        sampling={"rate": 1.0},
        candidates=[{"name": "small", "base_url": candidate.base_url, "model": "small-model"}],
    )
    status, _, _ = await post(
        proxy.base_url + "/chat/completions", {"model": "m", "messages": MESSAGES}
    )
    assert status == 502
    await proxy.stop()
    assert candidate.seen == []
    assert [(r["target"], r["error"]) for r in rows(proxy, "responses")] == [
        ("production", "connect")
    ]
    # Never sent, still recorded: the request row is written when the exchange ends.
    [req] = rows(proxy, "requests")
    assert req["model"] == "m" and req["sample_rate"] == 1.0


async def test_a_request_production_never_received_is_recorded_but_not_mirrored(
    upstream: FakeUpstream, candidate: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    """One pooled connection, held by the first request: the second times out waiting for
    it, unsent. Both are recorded; only the first, which production got, is mirrored."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        entered.set()
        await release.wait()
        return web.json_response({})

    upstream.handlers[("POST", "/v1/chat/completions")] = held
    proxy = await start_proxy(
        upstream.base_url,
        production={"pool_size": 1, "total_timeout_s": 1.5},
        sampling={"rate": 1.0},
        candidates=[{"name": "small", "base_url": candidate.base_url, "model": "small-model"}],
    )
    url = proxy.base_url + "/chat/completions"
    first = asyncio.create_task(post(url, {"model": "first", "messages": MESSAGES}))
    await entered.wait()
    second = await post(url, {"model": "second", "messages": MESSAGES})
    assert second[0] == 504
    assert (await first)[0] == 504  # production held it past the total timeout too
    release.set()
    for _ in range(100):
        if candidate.seen:
            break
        await asyncio.sleep(0.05)
    await proxy.stop()
    assert len(candidate.seen) == 1
    assert len(upstream.seen) == 1
    by_model = {r["model"]: r for r in rows(proxy, "requests")}
    assert set(by_model) == {"first", "second"}
    assert all(r["mirrored"] for r in by_model.values())  # the sampler said yes to both
    mirrored = [r for r in rows(proxy, "responses") if r["target"] == "small"]
    assert [r["request_id"] for r in mirrored] == [by_model["first"]["request_id"]]


async def test_request_goes_to_production_before_it_is_parsed_sampled_or_recorded(
    upstream: FakeUpstream, start_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The capture's request-side work runs while production works, not before it is asked."""
    events: list[str] = []
    send, parse = Connection.send, capture_module.parse_json_object

    def traced_send(self: Connection, *args: Any) -> None:
        events.append("sent")
        send(self, *args)

    def traced_parse(body: bytes) -> Any:
        events.append("parsed")
        return parse(body)

    monkeypatch.setattr(Connection, "send", traced_send)
    monkeypatch.setattr(capture_module, "parse_json_object", traced_parse)
    proxy = await start_proxy(upstream.base_url)
    for _ in range(2):
        status, _, _ = await post(
            proxy.base_url + "/chat/completions", {"model": "m", "messages": MESSAGES}
        )
        assert status == 200
    await proxy.stop()
    assert events == ["sent", "parsed"] * 2
    assert [r["model"] for r in rows(proxy, "requests")] == ["m", "m"]


async def test_compressed_answer_is_relayed_as_is_and_recorded_decoded(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    raw = orjson.dumps(chat_completion_for("compressed hello"))
    packed = gzip.compress(raw)

    async def gzipped(request: web.Request) -> web.StreamResponse:
        # An upstream that compresses although the proxy asked for identity.
        return web.Response(
            body=packed, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    upstream.handlers[("POST", "/v1/chat/completions")] = gzipped
    proxy = await start_proxy(upstream.base_url)
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(
            proxy.base_url + "/chat/completions", json={"model": "m", "messages": MESSAGES}
        ) as r,
    ):
        assert r.headers["Content-Encoding"] == "gzip"
        assert await r.read() == packed  # the client gets production's bytes
    assert upstream.seen[-1].headers["Accept-Encoding"] == "identity"
    await proxy.stop()
    [row] = rows(proxy, "responses")
    assert row["output_text"] == "compressed hello"


def chat_completion_for(text: str) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "model": "gpt-test",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
