"""Mirror: one row per shadow call, the candidate fault matrix, bounds under bursts, budgets, shutdown.

The first tests drive `Mirror` directly with a list recorder and real fake candidates on
loopback; the last ones run the whole proxy (`create_app`) to show that candidates never
change what the client receives, and never see the client's credentials.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client import CollectorRegistry

from proxy.config import Settings
from proxy.lake.reader import connect
from proxy.lake.rows import OMIT_KEY
from proxy.lake.writer import write_rows
from proxy.mirror import Mirror
from tests.proxy.conftest import FakeUpstream, ProxyFactory
from tests.proxy.fake_candidate import ANSWER, FakeCandidate, refused_url

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "gpt-prod", "messages": [{"role": "user", "content": "hi"}]}


class ListRecorder:
    """The recorder's interface, keeping rows in memory so a test can wait for them."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    def record(self, dataset: str, row: dict[str, Any]) -> bool:
        assert dataset == "responses"
        self.rows.append(row)
        self.changed.set()
        return True

    async def wait_for(self, n: int, within_s: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(within_s):
            while len(self.rows) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.rows

    def by_target(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self.rows:
            out.setdefault(r["target"], []).append(r)
        return out


def cand(name: str, base_url: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": base_url,
        "model": f"{name}-model",
        "api_key": f"sk-{name}",
        "timeout_s": 5.0,
        "price_input_per_mtok": 1.0,
        "price_output_per_mtok": 2.0,
        **kw,
    }


def settings(tmp_path: Path, *candidates: dict[str, Any], workers: int = 1) -> Settings:
    return Settings.model_validate(
        {
            "server": {"workers": workers},
            "production": {"base_url": "http://127.0.0.1:9/v1"},
            "candidates": list(candidates),
            "storage": {"data_dir": str(tmp_path)},
        }
    )


def metric(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def fakes() -> AsyncIterator[dict[str, FakeCandidate]]:
    """Fake candidates by name, each starting in the mode of its name ('ok' for others)."""
    made: dict[str, FakeCandidate] = {}
    for name in ("ok", "ok2", "hang", "500", "invalid", "cut", "slow"):
        mode = name if name in ("hang", "500", "invalid", "cut") else "ok"
        made[name] = await FakeCandidate(mode, delay_s=0.5 if name == "slow" else 0.0).start()
    yield made
    for f in made.values():
        await f.close()


@pytest.fixture
async def mirrors() -> AsyncIterator[list[Mirror]]:
    """Mirrors a test made; closed (without grace) at teardown if the test did not."""
    made: list[Mirror] = []
    yield made
    for m in made:
        await m.close(0.0)


async def started(
    made: list[Mirror], s: Settings, rec: ListRecorder
) -> tuple[Mirror, CollectorRegistry]:
    reg = CollectorRegistry(auto_describe=True)
    m = Mirror(s, rec, registry=reg)
    await m.start()
    made.append(m)
    return m, reg


async def test_one_row_per_call_with_answer_cost_and_timings(
    tmp_path: Path, fakes: dict[str, FakeCandidate], mirrors: list[Mirror]
) -> None:
    s = settings(
        tmp_path,
        cand("ok", fakes["ok"].base_url, extra_body={"logprobs": True}),
        cand("ok2", fakes["ok2"].base_url),
    )
    rec = ListRecorder()
    m, reg = await started(mirrors, s, rec)
    for i, stream in enumerate([False, True, True]):
        m.submit(f"r{i}", CHAT, BODY, stream)
    rows = await rec.wait_for(6)
    assert len(rows) == 6
    assert Counter((r["target"], r["request_id"]) for r in rows) == {
        (t, f"r{i}"): 1 for t in ("ok", "ok2") for i in range(3)
    }
    for r in rows:
        assert r["source"] == "live" and r["error"] is None and r["status"] == 200
        assert r["model"] == f"{r['target']}-model" and r["output_text"] == ANSWER
        assert r["cost_usd"] == pytest.approx((12 * 1.0 + 6 * 2.0) / 1e6)
        assert r["stream"] == (r["request_id"] != "r0")
        assert (r["ttft_ms"] is not None) == r["stream"]
        assert (r["logprobs"] is not None) == (r["target"] == "ok")
        assert OMIT_KEY not in r
    assert all(seen.body and seen.body["model"] == "ok-model" for seen in fakes["ok"].received)
    assert BODY["model"] == "gpt-prod"  # the production body is untouched
    for t in ("ok", "ok2"):
        assert metric(reg, "shadoweval_mirror_calls_total", candidate=t) == 3
        assert metric(reg, "shadoweval_mirror_latency_seconds_count", candidate=t) == 3
        assert metric(reg, "shadoweval_mirror_ttft_seconds_count", candidate=t) == 2
        assert metric(reg, "shadoweval_mirror_spend_today_usd", candidate=t) == pytest.approx(
            3 * 24 / 1e6
        )


async def test_submit_never_waits(
    tmp_path: Path, fakes: dict[str, FakeCandidate], mirrors: list[Mirror]
) -> None:
    s = settings(tmp_path, cand("ok", fakes["ok"].base_url))
    rec = ListRecorder()
    m, reg = await started(mirrors, s, rec)
    assert not asyncio.iscoroutinefunction(m.submit)
    m.submit("r1", CHAT, BODY, True)
    # No await has happened since: the call is only queued, nothing was sent or recorded.
    assert not fakes["ok"].received and not rec.rows
    assert metric(reg, "shadoweval_mirror_queue_depth", candidate="ok") == 1
    await rec.wait_for(1)
    assert metric(reg, "shadoweval_mirror_queue_depth", candidate="ok") == 0


async def test_candidate_fault_matrix(
    tmp_path: Path, fakes: dict[str, FakeCandidate], mirrors: list[Mirror]
) -> None:
    s = settings(
        tmp_path,
        cand("ok", fakes["ok"].base_url),
        cand("hang", fakes["hang"].base_url, timeout_s=3.0),
        cand("refused", refused_url()),
        cand("500", fakes["500"].base_url),
        cand("invalid", fakes["invalid"].base_url),
        cand("cut", fakes["cut"].base_url),
        cand("slow", fakes["slow"].base_url),
    )
    rec = ListRecorder()
    m, reg = await started(mirrors, s, rec)
    m.submit("r1", CHAT, BODY, True)
    first = (await rec.wait_for(1))[0]
    assert first["target"] in ("ok", "refused", "500", "invalid", "cut")
    # Lanes are independent: the quick outcomes are in while the hanging call still runs.
    await rec.wait_for(5)
    assert fakes["hang"].active == 1 and "hang" not in rec.by_target()
    await rec.wait_for(7)
    rows = {t: rs[0] for t, rs in rec.by_target().items()}
    got = {t: (r["error"], r["status"]) for t, r in rows.items()}
    assert got == {
        "ok": (None, 200),
        "hang": ("timeout", None),
        "refused": ("connect", None),
        "500": ("http", 500),
        "invalid": ("invalid", 200),
        "cut": ("invalid", 200),
        "slow": (None, 200),
    }
    assert rows["slow"]["latency_ms"] >= 500
    assert rows["ok"]["latency_ms"] < rows["slow"]["latency_ms"]
    assert rows["cut"]["output_text"] and ANSWER.startswith(rows["cut"]["output_text"])
    for t, kind in [
        ("hang", "timeout"),
        ("refused", "connect"),
        ("500", "http"),
        ("cut", "invalid"),
    ]:
        assert metric(reg, "shadoweval_mirror_errors_total", candidate=t, kind=kind) == 1
    assert metric(reg, "shadoweval_mirror_errors_total", candidate="ok", kind="http") == 0


async def test_queue_and_concurrency_bounds_under_a_burst(
    tmp_path: Path, fakes: dict[str, FakeCandidate], mirrors: list[Mirror]
) -> None:
    hang = fakes["hang"]
    s = settings(
        tmp_path,
        cand("hang", hang.base_url, max_concurrency=2, max_queue=3),
        cand("noqueue", hang.base_url, max_concurrency=1, max_queue=0),
    )
    rec = ListRecorder()
    m, reg = await started(mirrors, s, rec)
    for i in range(20):
        m.submit(f"r{i}", CHAT, BODY, False)
    # Past the bounds, calls are recorded as dropped at once, before anything was awaited.
    dropped = rec.by_target()
    assert len(dropped["hang"]) == 15 and len(dropped["noqueue"]) == 19
    assert {(r["error"], r["error_detail"]) for r in rec.rows} == {("dropped", "queue full")}
    assert (
        metric(reg, "shadoweval_mirror_skipped_total", candidate="hang", reason="queue_full") == 15
    )
    async with asyncio.timeout(5):
        while hang.active < 3:
            await hang.arrived.wait()
            hang.arrived.clear()
    await asyncio.sleep(0.2)  # give a wrongly unbounded lane time to start more calls
    assert hang.active == 3 and hang.max_active == 3  # 2 + 1 workers
    assert metric(reg, "shadoweval_mirror_in_flight", candidate="hang") == 2
    assert metric(reg, "shadoweval_mirror_queue_depth", candidate="hang") == 3
    hang.release.set()  # now every call answers 503 at once
    await rec.wait_for(40)
    assert Counter((r["target"], r["error"]) for r in rec.rows) == {
        ("hang", "dropped"): 15,
        ("hang", "http"): 5,
        ("noqueue", "dropped"): 19,
        ("noqueue", "http"): 1,
    }
    assert hang.max_active == 3


async def test_token_bucket_under_a_burst(
    tmp_path: Path, fakes: dict[str, FakeCandidate], mirrors: list[Mirror]
) -> None:
    s = settings(tmp_path, cand("ok", fakes["ok"].base_url, rate_per_s=5, max_queue=1000))
    rec = ListRecorder()
    m, reg = await started(mirrors, s, rec)
    t0 = time.monotonic()
    for i in range(50):
        m.submit(f"r{i}", CHAT, BODY, False)
    took = time.monotonic() - t0
    budget = [r for r in rec.rows if r["error"] == "budget"]
    # A burst of 5, plus a token per 200 ms the loop took (none, unless the machine stalled).
    assert 50 - (5 + 1 + int(took * 5)) <= len(budget) <= 45, took
    assert {r["error_detail"] for r in budget} == {"rate limit"}
    rows = await rec.wait_for(50)
    made = [r for r in rows if r["error"] is None]
    assert len(made) == 50 - len(budget) and len(fakes["ok"].received) == len(made)
    assert metric(
        reg, "shadoweval_mirror_skipped_total", candidate="ok", reason="rate_limit"
    ) == len(budget)


async def test_rate_is_shared_between_worker_processes(
    tmp_path: Path, fakes: dict[str, FakeCandidate], mirrors: list[Mirror]
) -> None:
    s = settings(tmp_path, cand("ok", fakes["ok"].base_url, rate_per_s=8), workers=4)
    rec = ListRecorder()
    m, _ = await started(mirrors, s, rec)
    for i in range(20):
        m.submit(f"r{i}", CHAT, BODY, False)
    assert len([r for r in rec.rows if r["error"] == "budget"]) in (17, 18)  # 8/4 = 2 per process


async def test_daily_cap_stops_mirroring(
    tmp_path: Path, fakes: dict[str, FakeCandidate], mirrors: list[Mirror]
) -> None:
    # 12 input and 6 output tokens at $1,000 per million: $0.024 a call; the cap allows two.
    pricey = {"price_input_per_mtok": 1000.0, "price_output_per_mtok": 2000.0}
    s = settings(tmp_path, cand("ok", fakes["ok"].base_url, daily_budget_usd=0.04, **pricey))
    rec = ListRecorder()
    m, reg = await started(mirrors, s, rec)
    for i in range(4):
        m.submit(f"r{i}", CHAT, BODY, False)
        await rec.wait_for(i + 1)
    assert [r["error"] for r in rec.rows] == [None, None, "budget", "budget"]
    assert rec.rows[2]["error_detail"] == "daily budget"
    assert len(fakes["ok"].received) == 2
    assert metric(reg, "shadoweval_mirror_spend_today_usd", candidate="ok") == pytest.approx(0.048)
    assert (
        metric(reg, "shadoweval_mirror_skipped_total", candidate="ok", reason="daily_budget") == 2
    )


async def test_todays_recorded_spend_counts_after_a_restart(
    tmp_path: Path, fakes: dict[str, FakeCandidate], mirrors: list[Mirror]
) -> None:
    now = datetime.now(UTC)
    write_rows(
        tmp_path,
        "responses",
        [
            {
                "request_id": "old",
                "target": "ok",
                "source": "live",
                "started_at": now,
                "cost_usd": 1.0,
            }
        ],
        kind="test",
    )
    s = settings(tmp_path, cand("ok", fakes["ok"].base_url, daily_budget_usd=1.0))
    rec = ListRecorder()
    m, _ = await started(mirrors, s, rec)
    m.submit("r1", CHAT, BODY, False)
    assert [r["error"] for r in rec.rows] == ["budget"] and not fakes["ok"].received


async def test_close_cancels_what_outlives_the_grace_and_records_it_dropped(
    tmp_path: Path, fakes: dict[str, FakeCandidate], mirrors: list[Mirror]
) -> None:
    hang, queued = fakes["hang"], fakes["ok2"]
    queued.delay_s = 0.1
    s = settings(
        tmp_path,
        cand("hang", hang.base_url, max_concurrency=2, timeout_s=60),
        cand("queued", queued.base_url, max_concurrency=1),
    )
    rec = ListRecorder()
    m, reg = await started(mirrors, s, rec)
    for i in range(5):
        m.submit(f"r{i}", CHAT, BODY, True)
    async with asyncio.timeout(5):
        while hang.active < 2:
            await hang.arrived.wait()
            hang.arrived.clear()
    t0 = time.perf_counter()
    await m.close(1.5)
    assert time.perf_counter() - t0 < 10  # bounded by the grace, not by the 60 s timeout
    by = rec.by_target()
    # Calls queued behind one worker were still made within the grace period (drained).
    assert [r["error"] for r in by["queued"]] == [None] * 5
    hang_rows = Counter((r["error"], r["error_detail"]) for r in by["hang"])
    assert hang_rows == {
        ("dropped", "cancelled at shutdown"): 2,
        ("dropped", "not started before shutdown"): 3,
    }
    assert all(r["latency_ms"] is not None for r in by["hang"] if "cancelled" in r["error_detail"])
    assert metric(reg, "shadoweval_mirror_errors_total", candidate="hang", kind="dropped") == 2
    assert metric(reg, "shadoweval_mirror_skipped_total", candidate="hang", reason="shutdown") == 3
    m.submit("late", CHAT, BODY, False)
    late = [r for r in rec.rows if r["request_id"] == "late"]
    assert [(r["error"], r["error_detail"]) for r in late] == [
        ("dropped", "mirror not running")
    ] * 2
    await m.close(1.0)  # idempotent


async def test_disabled_candidates_and_omitted_content(
    tmp_path: Path, fakes: dict[str, FakeCandidate], mirrors: list[Mirror]
) -> None:
    s = settings(
        tmp_path,
        cand("ok", fakes["ok"].base_url),
        cand("off", fakes["ok2"].base_url, enabled=False),
    )
    rec = ListRecorder()
    m, _ = await started(mirrors, s, rec)
    assert m.candidates == ["ok"]
    m.submit("r1", CHAT, BODY, False, omit_content=True)
    rows = await rec.wait_for(1)
    await asyncio.sleep(0.1)
    assert len(rec.rows) == 1 and rows[0]["target"] == "ok" and rows[0][OMIT_KEY] is True
    assert not fakes["ok2"].received


async def test_a_mirror_without_candidates_is_inert(tmp_path: Path) -> None:
    rec = ListRecorder()
    m = Mirror(settings(tmp_path), rec)
    await m.start()
    m.submit("r1", CHAT, BODY, True)
    await m.close(0.0)
    assert rec.rows == []


# -- the whole proxy -----------------------------------------------------------------------


async def _exchange(base_url: str, stream: bool) -> tuple[int, bytes, float]:
    """One request straight over HTTP: status, body bytes, seconds to the last byte."""
    body = {**BODY, "stream": True} if stream else BODY
    t0 = time.perf_counter()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base_url}/chat/completions",
            json=body,
            headers={"Authorization": "Bearer sk-client-secret"},
        ) as resp,
    ):
        data = b"".join([chunk async for chunk in resp.content.iter_any()])
        return resp.status, data, time.perf_counter() - t0


async def test_client_sees_the_same_answer_whatever_the_candidates_do(
    upstream: FakeUpstream, start_proxy: ProxyFactory, fakes: dict[str, FakeCandidate]
) -> None:
    upstream.chunk_delay_s = 0.02
    fakes["slow"].delay_s = 2.0
    plain = await start_proxy(upstream.base_url)
    faulty = [
        cand("hang", fakes["hang"].base_url, timeout_s=3.0),
        cand("refused", refused_url()),
        cand("500", fakes["500"].base_url),
        cand("invalid", fakes["invalid"].base_url),
        cand("cut", fakes["cut"].base_url),
        cand("slow", fakes["slow"].base_url),
    ]
    shadowed = await start_proxy(upstream.base_url, candidates=faulty, sampling={"rate": 1.0})
    for stream in (False, True):
        base = await _exchange(plain.base_url, stream)
        with_candidates = await _exchange(shadowed.base_url, stream)
        assert with_candidates[:2] == base[:2]
        # Not delayed by the hanging (3 s) or slow (2 s) candidates: a margin generous enough
        # for a loaded machine, and still short of either.
        assert with_candidates[2] < base[2] + 1.5
    await shadowed.stop()
    con = connect(shadowed.settings.storage.data_dir)
    rows = con.execute(
        "SELECT target, stream, error, status FROM responses WHERE target <> 'production'"
    ).fetchall()
    # The cut candidate only cuts streams; its non-streaming answer is fine.
    expected = {
        ("500", False): ("http", 500),
        ("500", True): ("http", 500),
        ("cut", False): (None, 200),
        ("cut", True): ("invalid", 200),
        ("hang", False): ("timeout", None),
        ("hang", True): ("timeout", None),
        ("invalid", False): ("invalid", 200),
        ("invalid", True): ("invalid", 200),
        ("refused", False): ("connect", None),
        ("refused", True): ("connect", None),
        ("slow", False): (None, 200),
        ("slow", True): (None, 200),
    }
    assert {(t, s): (e, st) for t, s, e, st in rows} == expected and len(rows) == 12


async def test_candidates_never_see_the_clients_credentials(
    upstream: FakeUpstream, start_proxy: ProxyFactory, fakes: dict[str, FakeCandidate]
) -> None:
    spy = fakes["ok"]
    proxy = await start_proxy(
        upstream.base_url,
        candidates=[cand("spy", spy.base_url, headers={"X-Team": "support"})],
        sampling={"rate": 1.0},
    )
    client = openai.AsyncOpenAI(
        base_url=proxy.base_url,
        api_key="sk-client-secret",
        max_retries=0,
        default_headers={"X-Custom-Client": "yes", "OpenAI-Organization": "org-client"},
    )
    answer = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hello"}]
    )
    stream = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    async for _ in stream:
        pass
    await client.close()
    assert answer.choices[0].message.content  # production answered the client
    await proxy.stop()
    assert len(spy.received) == 2
    for seen in spy.received:
        assert seen.headers["Authorization"] == "Bearer sk-spy"
        assert seen.headers["X-Team"] == "support"
        assert not any("client" in v for v in seen.headers.values())
        assert seen.body is not None and seen.body["model"] == "spy-model"
    assert [s.headers["Authorization"] for s in upstream.seen] == ["Bearer sk-client-secret"] * 2
    rows = (
        connect(proxy.settings.storage.data_dir)
        .execute("SELECT source, stream, error, output_text FROM responses WHERE target = 'spy'")
        .fetchall()
    )
    assert sorted(rows) == [("live", False, None, ANSWER), ("live", True, None, ANSWER)]
