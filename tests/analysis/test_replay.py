"""Replay against fake candidate servers on loopback: failures, bounds, interruption, resume."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from analysis.replay import Job, Pacer, Replay, plan
from proxy.config import Settings
from proxy.errors import ConfigError, InputError
from proxy.lake.reader import connect
from proxy.lake.writer import write_rows

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
KEY = "cand-secret-key"


class FakeCandidate:
    """An OpenAI-compatible model: 'fail' prompts get a 500, 'slow' ones never answer in time."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[dict[str, Any]] = []
        self.auth: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.healthy = False  # True: 'fail' prompts succeed too

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(body)
        self.auth.add(request.headers.get("Authorization", ""))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            prompt = body["messages"][-1]["content"]
            if "slow" in prompt:
                await asyncio.sleep(5)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if "fail" in prompt and not self.healthy:
                return web.json_response({"error": {"message": "boom"}}, status=500)
            answer = f"answer to {prompt}"
            if body.get("stream"):
                return await self._stream(request, body["model"], answer)
            return web.json_response(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
                }
            )
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request, model: str, answer: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, word in enumerate(answer.split(" ")):
            piece = word if i == 0 else " " + word
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        last = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        }
        await resp.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp


async def serve(fake: FakeCandidate) -> TestServer:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def settings_for(data_dir: Path, server: TestServer, timeout_s: float = 1.0) -> Settings:
    return Settings.model_validate(
        {
            "production": {"base_url": "http://127.0.0.1:9/v1"},
            "candidates": [
                {
                    "name": "cand",
                    "base_url": str(server.make_url("/v1")),
                    "model": "cand-model",
                    "api_key": KEY,
                    "timeout_s": timeout_s,
                    "price_input_per_mtok": 1.0,
                    "price_output_per_mtok": 2.0,
                }
            ],
            "storage": {"data_dir": str(data_dir)},
        }
    )


def make_lake(data_dir: Path, prompts: list[str], stream_every: int = 0) -> list[str]:
    """Requests with the given prompts, all in eval set 'es'; returns their ids."""
    ids = [f"r{i:03d}" for i in range(len(prompts))]
    rows = []
    for i, (rid, prompt) in enumerate(zip(ids, prompts, strict=True)):
        stream = bool(stream_every) and i % stream_every == 0
        body: dict[str, Any] = {"model": "prod", "messages": [{"role": "user", "content": prompt}]}
        if stream:
            body["stream"] = True
        rows.append(
            {
                "request_id": rid,
                "received_at": T0,
                "route": "/v1/chat/completions",
                "stream": stream,
                "body": json.dumps(body),
            }
        )
    write_rows(data_dir, "requests", rows, kind="test")
    write_rows(
        data_dir,
        "eval_sets",
        [
            {
                "eval_set": "es",
                "request_id": r,
                "stratum": "all",
                "inclusion_prob": 1.0,
                "created_at": T0,
            }
            for r in ids
        ],
        kind="test",
    )
    return ids


def replay_rows(data_dir: Path) -> list[tuple[Any, ...]]:
    return (
        connect(data_dir)
        .execute(
            "SELECT request_id, attempt, error, output_text, model, source, target, cost_usd, "
            "stream FROM responses WHERE source = 'replay' ORDER BY request_id, attempt"
        )
        .fetchall()
    )


async def test_full_run_with_repeats_failures_and_streams(tmp_path: Path) -> None:
    prompts = [f"question {i}" for i in range(8)] + ["please fail", "slow please"]
    ids = make_lake(tmp_path, prompts, stream_every=3)
    fake = FakeCandidate()
    server = await serve(fake)
    try:
        job = Replay(
            settings_for(tmp_path, server, timeout_s=0.5),
            "es",
            "cand",
            repeats=2,
            concurrency=3,
            progress=False,
            flush_every=4,
        )
        summary = await job.run()
    finally:
        await server.close()
    assert summary.planned == summary.done == 20 and summary.skipped == 0
    assert summary.errors == Counter({"http": 2, "timeout": 2})
    rows = replay_rows(tmp_path)
    assert [(r[0], r[1]) for r in rows] == [(rid, a) for rid in ids for a in (1, 2)]
    by_id = {(r[0], r[1]): r for r in rows}
    ok = by_id["r001", 1]
    assert ok[2] is None and ok[3] == "answer to question 1"
    assert ok[4:7] == ("cand-model", "replay", "cand")
    assert ok[7] == pytest.approx((10 * 1.0 + 4 * 2.0) / 1e6)
    assert by_id["r003", 2][3] == "answer to question 3" and by_id["r003", 2][8] is True
    assert by_id["r008", 1][2] == "http" and by_id["r009", 2][2] == "timeout"
    # The candidate saw its own model and key, never production's.
    assert {c["model"] for c in fake.calls} == {"cand-model"}
    assert fake.auth == {f"Bearer {KEY}"}


async def test_concurrency_and_rate_bounds(tmp_path: Path) -> None:
    make_lake(tmp_path, [f"q{i}" for i in range(12)])
    fake = FakeCandidate(delay_s=0.05)
    server = await serve(fake)
    try:
        settings = settings_for(tmp_path, server)
        await Replay(settings, "es", "cand", concurrency=2, progress=False).run()
        assert fake.max_in_flight <= 2 and len(fake.calls) == 12
        t0 = time.monotonic()
        await Replay(
            settings, "es", "cand", repeats=2, rate=20.0, concurrency=8, progress=False
        ).run()
        # 12 new calls (attempt 2) started at least 1/20 s apart: at least 11 intervals.
        assert time.monotonic() - t0 >= 11 / 20 * 0.9
        assert len(fake.calls) == 24
    finally:
        await server.close()


async def test_interrupt_keeps_completed_calls_and_resume_finishes_without_duplicates(
    tmp_path: Path,
) -> None:
    ids = make_lake(tmp_path, [f"q{i}" for i in range(40)])
    fake = FakeCandidate(delay_s=0.02)
    server = await serve(fake)
    try:
        settings = settings_for(tmp_path, server)
        job = Replay(
            settings, "es", "cand", repeats=2, concurrency=4, progress=False, flush_every=7
        )
        task = asyncio.create_task(job.run())
        for _ in range(2000):
            if job.summary.done >= 30:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        first = job.summary
        assert first.interrupted and 30 <= first.done < 80
        rows = replay_rows(tmp_path)
        assert len(rows) == first.done  # every completed call written, also the unflushed ones
        assert len({(r[0], r[1]) for r in rows}) == len(rows)

        again = Replay(settings, "es", "cand", repeats=2, concurrency=4, progress=False)
        second = await again.run()
        assert second.skipped == first.done and second.planned == 80 - first.done
        assert not second.interrupted
    finally:
        await server.close()
    rows = replay_rows(tmp_path)
    assert [(r[0], r[1]) for r in rows] == [(rid, a) for rid in ids for a in (1, 2)]
    assert all(r[2] is None for r in rows)
    # A third run has nothing to do.
    assert plan(tmp_path, "es", "cand", repeats=2)[0] == []


async def test_retry_failed_sends_failures_again(tmp_path: Path) -> None:
    make_lake(tmp_path, ["fine", "please fail", "also fine"])
    fake = FakeCandidate()
    server = await serve(fake)
    try:
        settings = settings_for(tmp_path, server)
        first = await Replay(settings, "es", "cand", progress=False).run()
        assert first.errors == Counter({"http": 1})
        fake.healthy = True
        plain = await Replay(settings, "es", "cand", progress=False).run()
        assert plain.planned == 0 and plain.skipped == 3
        retried = await Replay(settings, "es", "cand", retry_failed=True, progress=False).run()
        assert retried.planned == 1 and retried.failed == 0
    finally:
        await server.close()
    rows = [r for r in replay_rows(tmp_path) if r[0] == "r001"]
    assert sorted(r[2] or "" for r in rows) == ["", "http"]


async def test_plan_skips_requests_without_content_and_checks_names(tmp_path: Path) -> None:
    make_lake(tmp_path, ["one", "two"])
    write_rows(
        tmp_path,
        "requests",
        [
            {
                "request_id": "hidden",
                "received_at": T0,
                "route": "/v1/chat/completions",
                "body": None,
            }
        ],
        kind="test",
    )
    write_rows(
        tmp_path,
        "eval_sets",
        [
            {
                "eval_set": "es",
                "request_id": "hidden",
                "stratum": "all",
                "inclusion_prob": 1.0,
                "created_at": T0,
            }
        ],
        kind="test",
    )
    jobs, summary = plan(tmp_path, "es", "cand", repeats=3)
    assert summary.no_content == 1 and summary.items == 2 and len(jobs) == 6
    assert [j.attempt for j in jobs] == [1, 1, 2, 2, 3, 3]
    assert isinstance(jobs[0], Job) and jobs[0].body["messages"][0]["content"] == "one"
    with pytest.raises(InputError, match="unknown eval set"):
        plan(tmp_path, "nope", "cand")
    with pytest.raises(InputError, match="repeats"):
        plan(tmp_path, "es", "cand", repeats=0)
    fake = FakeCandidate()
    server = await serve(fake)
    try:
        with pytest.raises(ConfigError, match="unknown candidate 'other'"):
            Replay(settings_for(tmp_path, server), "es", "other")
    finally:
        await server.close()


async def test_pacer_spaces_starts() -> None:
    pacer = Pacer(50.0)
    loop = asyncio.get_running_loop()
    starts = []
    for _ in range(5):
        await pacer.wait()
        starts.append(loop.time())
    assert starts[-1] - starts[0] >= 4 / 50 * 0.9
    unlimited = Pacer(None)
    t0 = loop.time()
    for _ in range(100):
        await unlimited.wait()
    assert loop.time() - t0 < 0.5
