"""The app factory's own surface: probes, metrics, the access line, error JSON."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import LIFECYCLE, create_app
from proxy.config import LoggingSettings
from proxy.health import Lifecycle
from proxy.log import CURRENT_REQUEST_ID, access_lines, configure_logging
from tests.proxy.conftest import FakeUpstream, ProxyFactory, RunningProxy, make_settings


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON log lines of this process, captured; logging restored afterwards."""
    stream = io.StringIO()
    configure_logging(LoggingSettings(format="json", level="debug"), stream=stream, cache=False)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_health_and_readiness(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/healthz") as r:
            assert r.status == 200 and await r.json() == {"status": "ok"}
        async with s.get(proxy.url + "/readyz") as r:
            assert r.status == 200 and await r.json() == {"status": "ready"}
        proxy.app[LIFECYCLE].begin_drain(5.0)
        async with s.get(proxy.url + "/readyz") as r:
            assert r.status == 503 and await r.json() == {"status": "draining"}
        async with s.get(proxy.url + "/healthz") as r:
            assert r.status == 200  # alive while draining
        async with s.post(proxy.url + "/healthz") as r:
            assert r.status == 405
            assert (await r.json())["error"]["type"] == "invalid_request_error"
            assert "GET" in r.headers["Allow"]


def test_lifecycle_states() -> None:
    life = Lifecycle()
    assert not life.ready  # not started yet
    life.started = True
    assert life.ready
    assert life.remaining_s(7.0) == 7.0
    life.begin_drain(3.0)
    assert not life.ready and 0 < life.remaining_s(7.0) <= 3.0
    life.begin_drain(100.0)  # the first deadline stands
    assert life.remaining_s(7.0) <= 3.0


async def test_metrics_count_requests_latency_and_in_flight(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        entered.set()
        await release.wait()
        return web.json_response({"object": "list", "data": []})

    upstream.handlers[("GET", "/v1/models")] = held
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(
                proxy.base_url + "/chat/completions", json={"model": "m", "messages": []}
            ) as r:
                assert r.status == 200
        async with s.get(proxy.url + "/nope") as r:
            assert r.status == 404
        async with s.get(proxy.base_url + "/files/abc") as r:
            assert r.status == 200
        pending = asyncio.create_task(s.get(proxy.base_url + "/models"))
        await entered.wait()
        async with s.get(proxy.url + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            during = samples(await r.text())
        release.set()
        async with await pending as r:
            assert r.status == 200
    assert (
        during[
            (
                "shadoweval_http_requests_total",
                (("route", "/v1/chat/completions"), ("status", "200")),
            )
        ]
        == 2
    )
    assert (
        during[("shadoweval_http_requests_total", (("route", "unmatched"), ("status", "404")))] == 1
    )
    # Pass-through paths share one label: the number of series stays bounded.
    assert (
        during[("shadoweval_http_requests_total", (("route", "/v1/{tail}"), ("status", "200")))]
        == 1
    )
    assert (
        during[
            ("shadoweval_http_request_duration_seconds_count", (("route", "/v1/chat/completions"),))
        ]
        == 2
    )
    assert (
        during[("shadoweval_upstream_response_seconds_count", (("route", "/v1/chat/completions"),))]
        == 2
    )
    # The held /v1/models request and the /metrics scrape itself.
    assert during[("shadoweval_http_requests_in_flight", ())] == 2
    await asyncio.sleep(0.05)
    assert proxy.registry.get_sample_value("shadoweval_http_requests_in_flight") == 0


async def test_each_app_has_its_own_registry(upstream: FakeUpstream, tmp_path: Path) -> None:
    settings = make_settings(upstream.base_url, tmp_path)
    first, second = create_app(settings), create_app(settings)  # no duplicate-metric error
    assert first is not second
    shared = CollectorRegistry()
    create_app(settings, registry=shared)
    assert any(m.name == "shadoweval_http_requests" for m in shared.collect())


async def test_access_line_per_request_without_content_or_credentials(
    upstream: FakeUpstream, start_proxy: ProxyFactory, log_stream: io.StringIO
) -> None:
    proxy = await start_proxy(upstream.base_url, logging={"level": "debug"})
    secret_prompt, secret_key = "PROMPT-TEXT-4242", "sk-live-credential-1234"
    async with aiohttp.ClientSession() as s:
        async with s.post(
            proxy.base_url + "/chat/completions?api_key=" + secret_key,
            json={"model": "m", "messages": [{"role": "user", "content": secret_prompt}]},
            headers={
                "Authorization": f"Bearer {secret_key}",
                "x-shadow-request-id": "req-access-1",
            },
        ) as r:
            assert r.status == 200
        async with s.get(proxy.url + "/healthz") as r:
            assert r.status == 200
    text = log_stream.getvalue()
    assert secret_prompt not in text and secret_key not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["event"] == "access"]
    chat = next(line for line in access if line["route"] == "/v1/chat/completions")
    assert chat["request_id"] == "req-access-1"
    assert chat["status"] == 200 and chat["method"] == "POST"
    assert chat["latency_ms"] >= chat["upstream_ms"] > 0
    assert chat["level"] == "info" and "timestamp" in chat
    probe = next(line for line in access if line["route"] == "/healthz")
    assert probe["level"] == "debug" and probe["upstream_ms"] is None


async def test_access_log_can_be_turned_off(
    upstream: FakeUpstream, start_proxy: ProxyFactory, log_stream: io.StringIO
) -> None:
    proxy = await start_proxy(upstream.base_url, server={"access_log": False})
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.base_url + "/models") as r:  # aiohttp's server
            assert r.status == 200
        async with s.post(proxy.base_url + "/chat/completions", json={"model": "m"}) as r:
            assert r.status == 200  # the lean front
    structlog.get_logger("t").info("marker")  # the capture works: lines do arrive
    events = [json.loads(line)["event"] for line in log_stream.getvalue().splitlines()]
    assert "marker" in events and "access" not in events


def test_access_lines_are_not_even_made_when_the_level_filters_them(tmp_path: Path) -> None:
    """Under `logging.level: warning` the info-level access line would be dropped anyway."""
    at = {
        (level, on): access_lines(
            make_settings("http://127.0.0.1:9", tmp_path, logging={"level": level},
                          server={"access_log": on})
        )
        for level in ("debug", "info", "warning", "error")
        for on in (True, False)
    }  # fmt: skip
    assert [k for k, v in at.items() if v] == [("debug", True), ("info", True)]


async def test_lines_logged_while_a_request_runs_carry_its_id(log_stream: io.StringIO) -> None:
    """Any line, ours or a library's, in the request's task or one it started; none after."""

    async def child() -> None:
        await asyncio.sleep(0)
        structlog.get_logger("t").warning("child")

    async def handle(rid: str) -> None:
        token = CURRENT_REQUEST_ID.set(rid)
        try:
            structlog.get_logger("t").warning("inside", n=1)
            logging.getLogger("aiohttp.client").warning("library line")
            await asyncio.create_task(child())
            structlog.get_logger("t").warning("named", request_id="explicit")
        finally:
            CURRENT_REQUEST_ID.reset(token)

    await asyncio.gather(handle("req-a"), handle("req-b"))
    structlog.get_logger("t").warning("outside")
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    ids = [(line["event"], line.get("request_id")) for line in lines]
    for rid in ("req-a", "req-b"):
        assert ("inside", rid) in ids and ("library line", rid) in ids and ("child", rid) in ids
    assert ids.count(("named", "explicit")) == 2  # a line that names an id keeps its own
    assert ("outside", None) in ids


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_logged_tracebacks_never_show_local_variables(fmt: str) -> None:
    """A failing request's locals hold its Authorization header: never in the log."""
    stream = io.StringIO()
    configure_logging(LoggingSettings(format=fmt, level="info"), stream=stream, cache=False)
    try:
        secret = "sk-client-" + "Q" * 20

        def fail(authorization: str) -> None:
            raise RuntimeError("boom")

        try:
            fail(secret)
        except RuntimeError:
            structlog.get_logger("t").exception("handler failed")
            logging.getLogger("asyncio").exception("callback failed")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    assert "boom" in text and "handler failed" in text and "callback failed" in text
    assert secret not in text
