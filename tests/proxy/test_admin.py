"""POST /shadow/labels over real HTTP: token, size limit, every bad item listed, late arrivals."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.admin import LABELS_PATH, LabelsEndpoint, lookup_lake, setup_admin
from proxy.config import Settings
from proxy.lake.labels import LakeIndex
from proxy.lake.reader import connect
from proxy.lake.writer import write_rows

TOKEN = "s3cret-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class ListRecorder:
    """Takes rows like the proxy's recorder; `capacity` rows, then refuses."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.rows: list[tuple[str, dict[str, Any]]] = []
        self.capacity = capacity

    def record(self, dataset: str, row: dict[str, Any]) -> bool:
        if len(self.rows) >= self.capacity:
            return False
        self.rows.append((dataset, row))
        return True


def settings_for(data_dir: Path, token: str | None = TOKEN, max_bytes: int = 4096) -> Settings:
    return Settings.model_validate(
        {
            "production": {"base_url": "http://127.0.0.1:9"},
            "admin": {"token": token, "labels_max_bytes": max_bytes},
            "storage": {"data_dir": str(data_dir), "flush_interval_s": 0.05},
        }
    )


def seed_lake(data_dir: Path, rids: list[str], candidate_for: dict[str, str] | None = None) -> None:
    write_rows(
        data_dir,
        "requests",
        [{"request_id": r, "received_at": T0, "route": "/v1/chat/completions"} for r in rids],
        kind="test",
    )
    if candidate_for:
        write_rows(
            data_dir,
            "responses",
            [
                {"request_id": r, "target": t, "source": "live", "started_at": T0}
                for r, t in candidate_for.items()
            ],
            kind="test",
        )


async def client_for(
    settings: Settings, recorder: ListRecorder, endpoint: LabelsEndpoint | None = None
) -> TestClient[Any, Any]:
    app = web.Application()
    if endpoint is None:
        setup_admin(app, settings, recorder)
    else:
        app.router.add_post(LABELS_PATH, endpoint.handle)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    seed_lake(tmp_path, ["r1", "r2", "r3"], {"r1": "cand-a", "r2": "cand-b"})
    return tmp_path


GOOD: list[dict[str, Any]] = [
    {"request_id": "r1", "kind": "outcome", "value": {"accepted": True}},
    {"request_id": "r1", "kind": "verdict", "target": "cand-a", "value": "correct"},
    {"request_id": "r2", "kind": "reference", "value": "billing", "source": "human"},
]


async def test_disabled_without_a_configured_token(lake: Path) -> None:
    rec = ListRecorder()
    client = await client_for(settings_for(lake, token=None), rec)
    try:
        resp = await client.post(LABELS_PATH, json=GOOD, headers=AUTH)
        assert resp.status == 403
        body = await resp.json()
        assert "disabled" in body["error"]["message"]
        assert rec.rows == []
    finally:
        await client.close()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}],
)
async def test_missing_or_wrong_token_is_401(lake: Path, headers: dict[str, str]) -> None:
    rec = ListRecorder()
    client = await client_for(settings_for(lake), rec)
    try:
        resp = await client.post(LABELS_PATH, json=GOOD, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await resp.json())["error"]["type"] == "authentication_error"
        assert rec.rows == []
    finally:
        await client.close()


async def test_good_labels_are_recorded_and_read_back(lake: Path) -> None:
    rec = ListRecorder()
    client = await client_for(settings_for(lake), rec)
    try:
        resp = await client.post(LABELS_PATH, json=GOOD, headers=AUTH)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["accepted"] == 3
        assert [d for d, _ in rec.rows] == ["labels"] * 3
        rows = [r for _, r in rec.rows]
        assert body["label_ids"] == [r["label_id"] for r in rows]
        assert [r["source"] for r in rows] == ["system", "system", "human"]
        assert all(r["created_at"].tzinfo is not None for r in rows)
    finally:
        await client.close()
    # The rows are what the labels dataset takes.
    write_rows(lake, "labels", rows, kind="test")
    got = connect(lake).execute(
        "SELECT request_id, kind, target, value FROM labels_latest ORDER BY kind"
    )
    assert got.fetchall() == [
        ("r1", "outcome", None, '{"accepted": true}'),
        ("r2", "reference", None, '"billing"'),
        ("r1", "verdict", "cand-a", "true"),
    ]


async def test_every_bad_item_is_listed_and_nothing_recorded(lake: Path) -> None:
    rec = ListRecorder()
    endpoint = LabelsEndpoint(settings_for(lake), rec, sleep=lambda s: asyncio.sleep(0))
    client = await client_for(settings_for(lake), rec, endpoint)
    items: list[Any] = [
        GOOD[0],
        {"request_id": "r1", "kind": "vibe", "value": 1},
        "not an object",
        {"request_id": "nope", "kind": "reference", "value": "x"},
        {"request_id": "r2", "kind": "verdict", "target": "cand-a", "value": True},
        {"request_id": "r3", "kind": "verdict", "target": "production", "value": 1.5},
        {"request_id": "r3", "kind": "outcome", "value": 1, "source": "robot"},
    ]
    try:
        resp = await client.post(LABELS_PATH, json=items, headers=AUTH)
        assert resp.status == 400
        err = (await resp.json())["error"]
        assert err["code"] == "invalid_labels"
        assert "6 of 7" in err["message"]
        details = {d["item"]: d["reason"] for d in err["details"]}
        assert sorted(details) == [1, 2, 3, 4, 5, 6]
        assert "kind must be one of" in details[1]
        assert "must be an object" in details[2]
        assert "unknown request id 'nope'" in details[3]
        assert "unknown target 'cand-a'" in details[4]
        assert "[0, 1]" in details[5]
        assert "source must be one of" in details[6]
        assert rec.rows == []
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"{not json", "invalid_json"), (b'{"request_id": "r1"}', "invalid_labels")],
)
async def test_malformed_bodies_are_400(lake: Path, payload: bytes, code: str) -> None:
    rec = ListRecorder()
    client = await client_for(settings_for(lake), rec)
    try:
        resp = await client.post(LABELS_PATH, data=payload, headers=AUTH)
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == code
    finally:
        await client.close()


async def test_body_over_the_limit_is_413_with_or_without_length(lake: Path) -> None:
    rec = ListRecorder()
    client = await client_for(settings_for(lake, max_bytes=1000), rec)
    big = json.dumps([{**GOOD[2], "value": "x" * 2000}]).encode()

    async def chunked() -> Any:
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    try:
        resp = await client.post(LABELS_PATH, data=big, headers=AUTH)
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"
        resp = await client.post(LABELS_PATH, data=chunked(), headers=AUTH)
        assert resp.status == 413
        # Just under the limit is fine.
        ok = json.dumps([{**GOOD[2], "value": "x" * 100}]).encode()
        resp = await client.post(LABELS_PATH, data=ok, headers=AUTH)
        assert resp.status == 200
        assert rec.rows and len(rec.rows) == 1
    finally:
        await client.close()


async def test_ids_still_in_a_recorder_buffer_are_accepted_after_a_flush(tmp_path: Path) -> None:
    """The request lands in the lake while the endpoint waits one flush interval."""
    seed_lake(tmp_path, ["old"])
    threads: list[str] = []
    waits: list[float] = []

    def lookup(data_dir: Path, ids: list[str]) -> LakeIndex:
        threads.append(threading.current_thread().name)
        return lookup_lake(data_dir, ids)

    async def flush_meanwhile(seconds: float) -> None:
        waits.append(seconds)
        seed_lake(tmp_path, ["fresh"], {"fresh": "cand-a"})

    rec = ListRecorder()
    settings = settings_for(tmp_path)
    endpoint = LabelsEndpoint(settings, rec, lookup=lookup, sleep=flush_meanwhile)
    client = await client_for(settings, rec, endpoint)
    items = [
        {"request_id": "old", "kind": "outcome", "value": "accepted"},
        {"request_id": "fresh", "kind": "verdict", "target": "cand-a", "value": False},
    ]
    try:
        resp = await client.post(LABELS_PATH, json=items, headers=AUTH)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["accepted"] == 2
    finally:
        await client.close()
    assert waits == [pytest.approx(1.05)]
    assert len(threads) == 2 and threading.main_thread().name not in threads


async def test_shape_errors_answer_at_once_without_waiting(lake: Path) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    rec = ListRecorder()
    endpoint = LabelsEndpoint(settings_for(lake), rec, sleep=sleep)
    client = await client_for(settings_for(lake), rec, endpoint)
    try:
        items = [{"request_id": "ghost", "kind": "outcome", "value": 1}, {"kind": "outcome"}]
        resp = await client.post(LABELS_PATH, json=items, headers=AUTH)
        assert resp.status == 400
        assert len((await resp.json())["error"]["details"]) == 2
        assert waits == []
    finally:
        await client.close()


async def test_full_recorder_answers_503_with_what_to_resend(lake: Path) -> None:
    rec = ListRecorder(capacity=1)
    client = await client_for(settings_for(lake), rec)
    try:
        resp = await client.post(LABELS_PATH, json=GOOD, headers=AUTH)
        assert resp.status == 503
        err = (await resp.json())["error"]
        assert err["accepted"] == 1
        assert [d["item"] for d in err["details"]] == [1, 2]
        assert resp.headers["Retry-After"] == "1"
    finally:
        await client.close()


async def test_real_client_session_and_empty_array(lake: Path) -> None:
    rec = ListRecorder()
    client = await client_for(settings_for(lake), rec)
    try:
        async with aiohttp.ClientSession() as session:
            url = str(client.make_url(LABELS_PATH))
            async with session.post(url, json=[], headers=AUTH) as resp:
                assert resp.status == 200
                assert (await resp.json())["accepted"] == 0
    finally:
        await client.close()


async def test_with_the_real_recorder_a_label_for_a_buffered_request_lands(tmp_path: Path) -> None:
    """The request row is still in the recorder's buffer when its label arrives."""
    from proxy.lake.recorder import Recorder

    settings = settings_for(tmp_path)
    recorder = Recorder(settings.storage, writer_id="admin-test", maintenance_interval_s=None)
    await recorder.start()
    app = web.Application()
    setup_admin(app, settings, recorder)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        recorder.record("requests", {"request_id": "live-1", "received_at": datetime.now(UTC)})
        label = {"request_id": "live-1", "kind": "outcome", "value": {"ticket": "rerouted"}}
        resp = await client.post(LABELS_PATH, json=[label], headers=AUTH)
        assert resp.status == 200, await resp.text()
    finally:
        await client.close()
        await recorder.close()
    got = connect(tmp_path).execute("SELECT request_id, kind, value, source FROM labels")
    assert got.fetchall() == [("live-1", "outcome", '{"ticket": "rerouted"}', "system")]


async def test_through_the_proxy_an_app_labels_the_answer_it_just_got(
    upstream: Any, start_proxy: Any
) -> None:
    """The app calls production through the proxy with the openai SDK, keeps the request id,
    and posts an outcome label at once (the request row is not flushed yet)."""
    import openai

    proxy = await start_proxy(upstream.base_url, admin={"token": TOKEN})
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="client-key", max_retries=0)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}]
        )
        rid = raw.headers["x-shadow-request-id"]
    finally:
        await client.close()
    label = {"request_id": rid, "kind": "outcome", "value": {"accepted": True}}
    async with aiohttp.ClientSession() as session:
        url = proxy.url + LABELS_PATH
        async with session.post(url, json=[label]) as resp:
            assert resp.status == 401
        async with session.post(url, json=[label], headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["accepted"] == 1
    await proxy.stop()
    got = connect(proxy.settings.storage.data_dir).execute(
        "SELECT l.kind, l.value, r.route FROM labels l JOIN requests r USING (request_id)"
    )
    assert got.fetchall() == [("outcome", '{"accepted": true}', "/v1/chat/completions")]
