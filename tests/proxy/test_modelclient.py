"""ModelClient against real fake candidates on loopback: answers, the fault matrix, what is sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.config import CandidateSettings
from proxy.lake.schema import RESPONSES
from proxy.model_transport import candidate_pool
from proxy.modelclient import CallOutcome, ModelClient, merge
from proxy.upstream import UpstreamPool
from tests.proxy.fake_candidate import ANSWER, ANSWER_PIECES, FakeCandidate, refused_url

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {
    "model": "prod-model",
    "messages": [{"role": "user", "content": "hi"}],
    "metadata": {"task": "route"},
}


def candidate(base_url: str, **kw: Any) -> CandidateSettings:
    return CandidateSettings.model_validate(
        {
            "name": "cand",
            "base_url": base_url,
            "model": "cand-model",
            "api_key": "sk-cand",
            "timeout_s": 5.0,
            "price_input_per_mtok": 3.0,
            "price_output_per_mtok": 15.0,
            **kw,
        }
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeCandidate]:
    server = await FakeCandidate().start()
    yield server
    await server.close()


Maker = Callable[[CandidateSettings], ModelClient]


@pytest.fixture(params=["pool", "aiohttp"])
async def client_for(request: pytest.FixtureRequest) -> AsyncIterator[Maker]:
    """ModelClients over either transport: the mirror's lean pool, or replay's aiohttp session."""
    pools: list[UpstreamPool] = []
    async with aiohttp.ClientSession() as session:

        def make(cand: CandidateSettings) -> ModelClient:
            if request.param == "aiohttp":
                return ModelClient(session, cand)
            pool = candidate_pool(cand)
            pools.append(pool)
            return ModelClient(pool, cand)

        yield make
        for pool in pools:
            await pool.close()


async def test_non_streaming_answer_cost_and_row(fake: FakeCandidate, client_for: Maker) -> None:
    client = client_for(candidate(fake.base_url))
    out = await client.call(CHAT, BODY, stream=False)
    assert out.error is None and out.status == 200 and not out.stream
    assert out.output is not None and out.output.text == ANSWER
    assert out.ttft_ms is None and out.latency_ms is not None and out.latency_ms > 0
    assert client.cost_usd(out) == pytest.approx((12 * 3.0 + 6 * 15.0) / 1e6)
    row = out.to_row(
        request_id="r1", target="cand", source="live", model="cand-model", cost_usd=1.0
    )
    assert set(row) == {f.name for f in RESPONSES.schema} - {"writer", "schema_version"}
    assert row["output_text"] == ANSWER and row["attempt"] == 0 and row["cost_usd"] == 1.0
    assert row["started_at"].tzinfo is not None


async def test_streaming_answer_measures_ttft_and_asks_for_usage(
    fake: FakeCandidate, client_for: Maker
) -> None:
    client = client_for(candidate(fake.base_url, extra_body={"logprobs": True}))
    out = await client.call(CHAT, BODY, stream=True)
    assert out.error is None and out.stream
    assert out.output is not None and out.output.text == ANSWER and out.output.complete
    assert (out.output.prompt_tokens, out.output.completion_tokens) == (12, 6)
    assert out.ttft_ms is not None and out.latency_ms is not None
    assert 0 < out.ttft_ms <= out.latency_ms
    assert len(orjson.loads(out.output.logprobs or "")) == len(ANSWER_PIECES)
    sent = fake.received[-1].body
    assert sent is not None and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_usage_option_is_configurable_and_missing_usage_means_unknown_cost(
    fake: FakeCandidate, client_for: Maker
) -> None:
    client = client_for(candidate(fake.base_url, stream_include_usage=False))
    out = await client.call(CHAT, BODY, stream=True)
    assert out.error is None and out.output is not None and out.output.prompt_tokens is None
    assert client.cost_usd(out) is None
    assert "stream_options" not in (fake.received[-1].body or {})


@pytest.mark.parametrize(
    ("route", "stream", "text"),
    [
        ("/v1/completions", False, ANSWER),  # the fake answers chat-shaped; parsed all the same
        ("/v1/responses", False, ANSWER),
        ("/v1/responses", True, ANSWER),
        ("/v1/embeddings", False, None),
    ],
)
async def test_other_routes(
    fake: FakeCandidate, client_for: Maker, route: str, stream: bool, text: str | None
) -> None:
    client = client_for(candidate(fake.base_url))
    body = {"model": "m", "input": "hello"}
    out = await client.call(route, body, stream=stream)
    assert out.error is None, out.error_detail
    assert out.output is not None and out.output.text == text
    assert out.output.prompt_tokens is not None
    assert fake.received[-1].path == route
    if route == "/v1/responses" and stream:
        assert "stream_options" not in (fake.received[-1].body or {})


async def test_what_the_candidate_receives(fake: FakeCandidate, client_for: Maker) -> None:
    cand = candidate(
        fake.base_url,
        headers={"X-Team": "support", "content-type": "application/json"},
        extra_body={"logprobs": True, "top_logprobs": 5, "metadata": {"shadow": "yes"}},
    )
    body = {**BODY, "stream": True, "stream_options": {"include_usage": False, "x": 1}}
    before = orjson.dumps(body)
    await client_for(cand).call(CHAT, body, stream=False)
    assert orjson.dumps(body) == before  # the caller's body is never modified
    seen = fake.received[-1]
    assert seen.headers["Authorization"] == "Bearer sk-cand"
    assert seen.headers["X-Team"] == "support"
    assert [k for k in seen.headers if k.lower() == "content-type"] == ["Content-Type"]
    assert seen.body == {
        "model": "cand-model",
        "messages": BODY["messages"],
        "metadata": {"task": "route", "shadow": "yes"},
        "logprobs": True,
        "top_logprobs": 5,
    }


async def test_no_api_key_sends_no_authorization(fake: FakeCandidate, client_for: Maker) -> None:
    await client_for(candidate(fake.base_url, api_key=None)).call(CHAT, BODY, stream=False)
    assert "Authorization" not in fake.received[-1].headers


@pytest.mark.parametrize(
    ("mode", "stream", "error", "status"),
    [
        ("hang", False, "timeout", None),
        ("hang", True, "timeout", None),
        ("500", False, "http", 500),
        ("500", True, "http", 500),
        ("invalid", False, "invalid", 200),
        ("invalid", True, "invalid", 200),
        ("nochoices", False, "invalid", 200),
        ("cut", True, "invalid", 200),
    ],
)
async def test_fault_matrix(
    fake: FakeCandidate,
    client_for: Maker,
    mode: str,
    stream: bool,
    error: str,
    status: int | None,
) -> None:
    fake.mode = mode
    # A short timeout only where the timeout is the point: a stall of a loaded machine must
    # not turn another fault into a timeout.
    client = client_for(candidate(fake.base_url, timeout_s=0.3 if mode == "hang" else 30))
    out = await client.call(CHAT, BODY, stream=stream)
    assert (out.error, out.status) == (error, status), out.error_detail
    assert out.latency_ms is not None and out.error_detail
    if mode == "500":
        assert out.error_detail == "busy" and out.output is None
    if mode == "cut":
        # What arrived before the cut is kept (it was produced), but the row says invalid.
        assert out.output is not None and not out.output.complete
        assert out.output.text and ANSWER.startswith(out.output.text)


async def test_refused_connection(client_for: Maker) -> None:
    out = await client_for(candidate(refused_url())).call(CHAT, BODY, stream=True)
    assert (out.error, out.status, out.output) == ("connect", None, None)
    assert out.error_detail and "sk-cand" not in out.error_detail


async def test_slow_candidate_is_measured_not_failed(
    fake: FakeCandidate, client_for: Maker
) -> None:
    client = client_for(candidate(fake.base_url))
    fast = await client.call(CHAT, BODY, stream=True)
    fake.delay_s = 0.3
    slow = await client.call(CHAT, BODY, stream=True)
    assert fast.error is None and slow.error is None
    assert slow.ttft_ms is not None and slow.ttft_ms >= 300.0
    assert slow.latency_ms is not None and fast.latency_ms is not None
    assert slow.latency_ms > fast.latency_ms


async def test_cancellation_propagates(fake: FakeCandidate, client_for: Maker) -> None:
    fake.mode = "hang"
    client = client_for(candidate(fake.base_url))
    task = asyncio.create_task(client.call(CHAT, BODY, stream=True))
    await asyncio.wait_for(fake.arrived.wait(), 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_unserialisable_body_is_invalid_without_a_call(
    fake: FakeCandidate, client_for: Maker
) -> None:
    out = await client_for(candidate(fake.base_url)).call(CHAT, {"messages": {1, 2}}, stream=False)
    assert out.error == "invalid" and not fake.received


def test_not_made_and_merge() -> None:
    out = CallOutcome.not_made("budget", "daily budget reached", stream=True)
    row = out.to_row(request_id="r", target="c", source="live", model="m", cost_usd=None)
    assert (row["error"], row["status"], row["output_text"], row["stream"]) == (
        "budget",
        None,
        None,
        True,
    )
    base = {"a": {"b": 1, "c": 2}, "d": 1}
    assert merge(base, {"a": {"c": 3}, "e": 4}) == {"a": {"b": 1, "c": 3}, "d": 1, "e": 4}
    assert base == {"a": {"b": 1, "c": 2}, "d": 1}
