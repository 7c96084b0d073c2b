"""The simulator over HTTP, driven by the official `openai` SDK on loopback.

Accuracy, latency, errors and timeouts are checked against the configuration within
sampling error (binomial 4 sigma); answers are deterministic and identical whether
streamed or not, and the logprobs the server sends are the confidence the model meant.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionTokenLogprob
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice

from analysis.confidence import logprob_confidence
from analysis.scoring import extract
from analysis.settings import ScorerRule
from shadoweval.simulator.server import RunningSimulator, SimulatorThread, start_simulator
from shadoweval.simulator.task import QUEUES, Ticket, extract_queue, load_task
from tests.shadoweval.simfix import chat, gather_limited, one_model, quiet_default

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(quiet_default())
    yield running
    await running.close()


def _client(sim: RunningSimulator, timeout: float = 30.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=sim.base_url, api_key="sk-none", max_retries=0, timeout=timeout
    )


def _tokens(choice: Choice | ChunkChoice) -> list[ChatCompletionTokenLogprob]:
    """The logprobs of a choice's tokens (which the request asked for)."""
    assert choice.logprobs is not None and choice.logprobs.content is not None
    return choice.logprobs.content


async def test_non_streaming_answer_with_logprobs(sim: RunningSimulator) -> None:
    ticket = load_task().tickets[0]
    async with _client(sim) as client:
        r = await client.chat.completions.create(
            model="prod",
            messages=chat(ticket),
            logprobs=True,
            top_logprobs=20,
        )
    choice = r.choices[0]
    assert choice.message.content in QUEUES
    assert choice.finish_reason == "stop"
    assert r.model == "prod" and r.id.startswith("chatcmpl-")
    assert r.usage is not None and r.usage.completion_tokens == 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + 1 > 100
    assert choice.logprobs is not None and choice.logprobs.content is not None
    first = choice.logprobs.content[0]
    assert first.token == choice.message.content
    tops = first.top_logprobs
    assert tops[0].token == first.token and tops[0].logprob == first.logprob
    assert sorted(t.token for t in tops) == sorted(QUEUES)
    assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
    assert math.isclose(sum(math.exp(t.logprob) for t in tops), 1.0, rel_tol=1e-9)
    assert bytes(first.bytes or []) == first.token.encode()


async def test_logprobs_only_when_asked_and_top_n_respected(sim: RunningSimulator) -> None:
    messages = chat(load_task().tickets[1])
    async with _client(sim) as client:
        plain = await client.chat.completions.create(model="small", messages=messages)
        three = await client.chat.completions.create(
            model="small",
            messages=messages,
            logprobs=True,
            top_logprobs=3,
        )
    assert plain.choices[0].logprobs is None
    assert three.choices[0].logprobs is not None and three.choices[0].logprobs.content is not None
    assert len(three.choices[0].logprobs.content[0].top_logprobs) == 3


async def test_stream_equals_non_stream_and_reports_usage(sim: RunningSimulator) -> None:
    messages = chat(load_task().tickets[2])
    async with _client(sim) as client:
        whole = await client.chat.completions.create(
            model="big",
            messages=messages,
            logprobs=True,
            top_logprobs=5,
        )
        stream = await client.chat.completions.create(
            model="big",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=5,
        )
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert whole.usage is not None and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    streamed = [_tokens(c.choices[0]) for c in chunks if c.choices and c.choices[0].logprobs]
    assert streamed == [_tokens(whole.choices[0])]
    # Without include_usage there is no usage chunk.
    async with _client(sim) as client:
        bare = await client.chat.completions.create(model="big", messages=messages, stream=True)
        assert all(c.usage is None and c.choices for c in [c async for c in bare])


def test_sync_client_stream_and_not() -> None:
    with SimulatorThread(quiet_default()) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-none", max_retries=0)
        messages = chat(load_task().tickets[3])
        whole = client.chat.completions.create(model="tuned", messages=messages)
        stream = client.chat.completions.create(model="tuned", messages=messages, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == whole.choices[0].message.content in QUEUES
        names = {m.id for m in client.models.list()}
        assert names == {"prod", "prod-replica", "big", "small", "tuned"}
        client.close()


async def test_free_text_prompt_gets_a_plausible_reply_and_max_tokens_cuts_it(
    sim: RunningSimulator,
) -> None:
    messages = chat([{"role": "user", "content": "How do I reset my router?"}])
    async with _client(sim) as client:
        full = await client.chat.completions.create(model="prod", messages=messages)
        cut = await client.chat.completions.create(model="prod", messages=messages, max_tokens=3)
        stream = await client.chat.completions.create(
            model="prod",
            messages=messages,
            max_tokens=3,
            stream=True,
        )
        parts = [c.choices[0].delta.content or "" for c in [c async for c in stream] if c.choices]
    text = full.choices[0].message.content or ""
    assert len(text.split()) > 5 and full.choices[0].finish_reason == "stop"
    assert (
        cut.choices[0].finish_reason == "length" and cut.usage and cut.usage.completion_tokens == 3
    )
    assert (
        text.startswith(cut.choices[0].message.content or "-")
        and "".join(parts) == cut.choices[0].message.content
    )


async def test_unknown_model_and_bad_requests_get_openai_errors(sim: RunningSimulator) -> None:
    async with _client(sim) as client:
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(
                model="gpt-nope", messages=chat([{"role": "user", "content": "hi"}])
            )
        assert err.value.code == "model_not_found" and "gpt-nope" in err.value.message
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="prod", messages=[])
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.base_url}/chat/completions", data=b"{not json") as resp:
            assert (
                resp.status == 400
                and (await resp.json())["error"]["type"] == "invalid_request_error"
            )
        async with http.get(f"{sim.base_url}/nothing-here") as resp:
            assert resp.status == 404 and "error" in await resp.json()
        async with http.get(f"{sim.base_url}/models/big") as resp:
            assert (await resp.json())["id"] == "big"


async def test_accuracy_over_http_matches_configuration(sim: RunningSimulator) -> None:
    """Share of right answers vs the configured per-ticket chance, within 4 binomial sigma."""
    tickets = load_task().tickets[:300]
    models = sim.simulator.models
    async with _client(sim) as client:
        for name in ("big", "small"):

            async def ask(t: Ticket, name: str = name) -> str | None:
                r = await client.chat.completions.create(model=name, messages=chat(t))
                return r.choices[0].message.content

            outputs = await gather_limited(tickets, ask)
            right = sum(extract_queue(o) == t.queue for o, t in zip(outputs, tickets, strict=True))
            p = [models[name].ticket_p_correct(t) for t in tickets]
            sd = math.sqrt(sum(x * (1 - x) for x in p))
            assert abs(right - sum(p)) < 4 * sd, (name, right, sum(p), sd)
            # The server answers exactly what the model computes in-process.
            assert outputs == [models[name].answer(t.messages()).text for t in tickets]


async def test_served_logprobs_are_the_confidence_the_analysis_reads(sim: RunningSimulator) -> None:
    tickets = load_task().tickets[:60]
    model = sim.simulator.models["small"]
    rule = ScorerRule(kind="normalized")
    async with _client(sim) as client:
        for t in tickets:
            r = await client.chat.completions.create(
                model="small",
                messages=chat(t),
                logprobs=True,
                top_logprobs=5,
            )
            text = r.choices[0].message.content or ""
            recorded = json.dumps([c.model_dump() for c in _tokens(r.choices[0])])
            conf = logprob_confidence(recorded, text, extract(rule, text))
            assert math.isclose(conf, model.answer(t.messages()).confidence, rel_tol=1e-12)


async def test_answers_are_deterministic_for_a_seed() -> None:
    tickets = load_task().tickets[:40]
    first = await start_simulator(quiet_default())
    second = await start_simulator(quiet_default())
    try:
        got = []
        for running in (first, first, second):
            async with _client(running) as client:

                async def ask(
                    t: Ticket, client: openai.AsyncOpenAI = client
                ) -> tuple[str | None, float]:
                    r = await client.chat.completions.create(
                        model="prod",
                        messages=chat(t),
                        logprobs=True,
                        top_logprobs=6,
                    )
                    return r.choices[0].message.content, _tokens(r.choices[0])[0].logprob

                got.append(await gather_limited(tickets, ask))
        assert got[0] == got[1] == got[2]
    finally:
        await first.close()
        await second.close()


async def test_ttft_median_follows_the_latency_model() -> None:
    """Streaming TTFT medians, one call at a time so the client's own work stays small.

    The bounds allow 4 sigma of sampling error of a median, plus up to 25 ms of client and
    loopback overhead on top (never below: the server cannot answer before its draw)."""
    scale, n = 0.05, 40
    running = await start_simulator(quiet_default(time_scale=scale))
    tickets = load_task().tickets[:n]
    try:
        async with _client(running) as client:
            for name in ("big", "small"):
                got = []
                for t in tickets:
                    start = time.perf_counter()
                    stream = await client.chat.completions.create(
                        model=name,
                        messages=chat(t),
                        stream=True,
                    )
                    first = None
                    async for chunk in stream:
                        if first is None and chunk.choices and chunk.choices[0].delta.content:
                            first = time.perf_counter() - start
                    assert first is not None
                    got.append(first * 1000)
                spec = running.simulator.models[name].spec.latency.ttft_ms
                want = spec.median * scale
                # The sd of the log of a median of n log-normal draws is 1.2533 sigma / sqrt(n).
                slack = math.exp(4 * 1.2533 * spec.sigma / math.sqrt(n))
                median = statistics.median(got)
                # Plus up to 75 ms for the SDK and the loop on a loaded machine (a model that
                # ignored time_scale would take 160 ms for "small", 20 times as long).
                assert want / slack <= median <= want * slack + 75, (name, median, want)
    finally:
        await running.close()


async def test_errors_and_timeouts_at_their_configured_rates() -> None:
    running = await start_simulator(
        one_model(error_rate=0.2, timeout_rate=0.1, error_statuses={500: 1, 503: 1, 429: 2})
    )
    n = 300
    tickets = load_task(0, 500).tickets[:n]
    try:
        # Injected timeouts hang for 60 s; 3 s leaves a busy machine time to connect, so a
        # client timeout always means the simulator held the call (stats["calls"] counts it).
        async with _client(running, timeout=3.0) as client:

            async def call(t: Ticket) -> str:
                try:
                    await client.chat.completions.create(model="m", messages=chat(t))
                except openai.APITimeoutError:
                    return "timeout"
                except openai.APIStatusError as exc:
                    return str(exc.status_code)
                return "ok"

            seen = Counter(await gather_limited(tickets, call, limit=60))
        errors = seen["500"] + seen["503"] + seen["429"]
        for count, rate in ((errors, 0.2), (seen["timeout"], 0.1)):
            assert abs(count - n * rate) < 4 * math.sqrt(n * rate * (1 - rate)), (seen, rate)
        assert abs(seen["429"] - errors / 2) < 4 * math.sqrt(errors / 4) + 1, seen
        assert seen["ok"] + errors + seen["timeout"] == n
        stats = running.simulator.stats["m"]
        assert (
            stats["calls"] == n
            and stats["errors"] == errors
            and stats["timeouts"] == seen["timeout"]
        )
        assert stats["status_429"] == seen["429"]
    finally:
        await running.close()


async def test_a_stalled_stream_times_out_and_shutdown_releases_hangs() -> None:
    running = await start_simulator(
        one_model(timeout_rate=1.0, error_rate=0.0).model_copy(update={"hang_s": 30.0})
    )
    messages = chat(load_task(0, 500).tickets[0])
    async with _client(running, timeout=0.3) as client:
        stream_failed = False
        try:
            stream = await client.chat.completions.create(model="m", messages=messages, stream=True)
            async for _ in stream:
                pass
        except openai.APITimeoutError:
            stream_failed = True
        assert stream_failed
    async with _client(running, timeout=60) as client:
        hanging = asyncio.ensure_future(
            client.chat.completions.create(model="m", messages=messages)
        )
        for _ in range(1000):  # until the server holds the request (at most 10 s)
            if running.simulator.stats["m"]["timeouts"] >= 2:
                break
            await asyncio.sleep(0.01)
        start = time.perf_counter()
        await running.close()
        assert time.perf_counter() - start < 10
        with pytest.raises(openai.APIError):
            await hanging


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "shadoweval",
        "simulate",
        "--config",
        str(ROOT / "configs/simulator.yaml"),
        "--port",
        "0",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = proc.stdout.readline()
        assert "simulated models at http://127.0.0.1:" in line, line + (
            proc.stderr.read() if proc.poll() else ""
        )
        base = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(f"{base}/models", timeout=10) as resp:
            names = {m["id"] for m in json.load(resp)["data"]}
        assert {"prod", "big", "small"} <= names
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: x\n    accuracy: 1.5\n")
    done = subprocess.run(
        [sys.executable, "-m", "shadoweval", "simulate", "--config", str(bad), "--port", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "models.0.accuracy" in done.stderr
