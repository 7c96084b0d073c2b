"""The relay to production: transparent for content, statuses, headers and credentials."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from proxy.ids import id_time_ms
from tests.proxy.conftest import (
    CHAT_TEXT,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    hop_by_hop_answer,
)

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_async_sdk_gets_exact_answers_on_every_route(proxy: RunningProxy) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    chat = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert chat.choices[0].message.content == CHAT_TEXT
    assert chat.usage is not None and chat.usage.total_tokens == 18
    completion = await client.completions.create(model="gpt-test-instruct", prompt="hello")
    assert completion.choices[0].text == " world"
    emb = await client.embeddings.create(model="emb-test", input="hello")
    assert emb.data[0].embedding == [0.25, -0.5, 1.0]
    resp = await client.responses.create(model="gpt-test", input="hello")
    assert resp.output_text == "Responses API says hi."
    models = await client.models.list()
    assert [m.id for m in models.data] == ["gpt-test"]
    await client.close()


async def test_sync_sdk_works_through_the_proxy(proxy: RunningProxy) -> None:
    def call() -> tuple[str | None, str | None]:
        with openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=MESSAGES
            )
            return raw.parse().choices[0].message.content, raw.headers.get("x-shadow-request-id")

    # The sync client blocks its thread; the proxy keeps running in this event loop.
    content, rid = await asyncio.to_thread(call)
    assert content == CHAT_TEXT
    assert rid is not None and id_time_ms(rid) is not None


async def test_response_body_and_headers_are_byte_for_byte(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            proxy.base_url + "/chat/completions", json={"model": "m", "messages": MESSAGES}
        ) as via:
            via_body, via_headers = await via.read(), via.headers
        async with s.post(
            upstream.base_url + "/chat/completions", json={"model": "m", "messages": MESSAGES}
        ) as direct:
            direct_body = await direct.read()
    assert via_body == direct_body
    assert via_headers["x-request-id"] == "req_upstream_1"
    assert via_headers["Content-Type"] == "application/json; charset=utf-8"
    assert via_headers["Content-Length"] == str(len(direct_body))


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_error_statuses_pass_through_with_headers_and_body(
    proxy: RunningProxy, upstream: FakeUpstream, status: int
) -> None:
    body = orjson.dumps(
        {
            "error": {
                "message": f"upstream says {status}",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        }
    )

    async def refuse(request: web.Request) -> web.StreamResponse:
        headers = {
            "Retry-After": "7",
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "12ms",
            "x-request-id": "req_err",
        }
        return web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )

    upstream.handlers[("POST", "/v1/chat/completions")] = refuse
    async with (
        aiohttp.ClientSession() as s,
        s.post(proxy.base_url + "/chat/completions", json={"model": "m"}) as r,
    ):
        assert r.status == status
        assert await r.read() == body
        assert r.headers["Retry-After"] == "7"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"] == "12ms"
        assert r.headers["x-request-id"] == "req_err"
        assert "x-shadow-request-id" in r.headers

    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == status
    assert f"upstream says {status}" in info.value.message
    await client.close()


async def test_unreachable_upstream_is_502_error_json(start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(f"http://127.0.0.1:{free_port()}/v1")
    async with (
        aiohttp.ClientSession() as s,
        s.post(proxy.base_url + "/chat/completions", json={"model": "m"}) as r,
    ):
        assert r.status == 502
        err = (await r.json())["error"]
        assert err["type"] == "upstream_error" and err["code"] == "bad_gateway"
        assert err["message"].startswith("upstream unreachable")
        assert "x-shadow-request-id" in r.headers


async def test_upstream_timeout_is_504_error_json(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response()

    upstream.handlers[("POST", "/v1/chat/completions")] = hang
    proxy = await start_proxy(upstream.base_url, production={"read_timeout_s": 0.3})
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 504
    assert info.value.code == "gateway_timeout"
    await client.close()


async def test_total_timeout_is_also_504(upstream: FakeUpstream, start_proxy: ProxyFactory) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response()

    upstream.handlers[("POST", "/v1/embeddings")] = hang
    proxy = await start_proxy(upstream.base_url, production={"total_timeout_s": 0.3})
    async with (
        aiohttp.ClientSession() as s,
        s.post(proxy.base_url + "/embeddings", json={"input": "x"}) as r,
    ):
        assert r.status == 504
        assert (await r.json())["error"]["code"] == "gateway_timeout"


async def test_oversized_body_is_413_and_never_forwarded(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.base_url, server={"body_limit_bytes": 1000})
    big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]})
    async with aiohttp.ClientSession() as s:
        async with s.post(
            proxy.base_url + "/chat/completions",
            data=big,
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 413
            err = (await r.json())["error"]
            assert err["code"] == "request_too_large" and "1000 bytes" in err["message"]

        async def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(5):
                yield b"y" * 400

        async with s.post(proxy.base_url + "/files", data=chunks()) as r:
            assert r.status == 413
        # A body at the limit is fine.
        async with s.post(proxy.base_url + "/files", data=b"z" * 1000) as r:
            assert r.status == 200
    assert [seen.path_qs for seen in upstream.seen] == ["/v1/files"]


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json {",
        b'{"model": "m", "messages": [',
        b"\xff\xfe\x00 binary",
        b"[1, 2, 3]",
        b"",
    ],
)
async def test_malformed_bodies_are_forwarded_untouched(
    proxy: RunningProxy, upstream: FakeUpstream, body: bytes
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            proxy.base_url + "/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400  # production's own answer to the bad body
            assert "could not parse" in (await r.json())["error"]["message"]
        # The proxy is still serving.
        async with s.post(
            proxy.base_url + "/chat/completions", json={"model": "m", "messages": MESSAGES}
        ) as r:
            assert r.status == 200
    assert upstream.seen[0].body == body


async def test_other_v1_paths_pass_through_with_method_query_and_body(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    async with aiohttp.ClientSession() as s:
        for method in ("GET", "DELETE", "PUT", "PATCH", "POST"):
            async with s.request(
                method,
                proxy.base_url + "/files/file-abc%2Fx/content?limit=2&after=a%20b&order=desc",
                data=b"raw-bytes" if method in ("PUT", "PATCH", "POST") else None,
            ) as r:
                assert r.status == 200
                echo = await r.json()
                assert r.headers["x-echo"] == "1"
            assert echo["method"] == method
            assert (
                echo["path_qs"] == "/v1/files/file-abc%2Fx/content?limit=2&after=a%20b&order=desc"
            )
            assert echo["body"] == ("raw-bytes" if method in ("PUT", "PATCH", "POST") else "")
        # GET on a recorded route is a different OpenAI endpoint (stored completions): passed through.
        async with s.get(proxy.base_url + "/chat/completions?limit=1") as r:
            assert (await r.json())["path_qs"] == "/v1/chat/completions?limit=1"


async def test_production_base_url_with_a_path_prefix(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    assert upstream.server is not None
    proxy = await start_proxy(str(upstream.server.make_url("/openai/deployments/v1")))
    async with aiohttp.ClientSession() as s, s.get(proxy.base_url + "/models?x=1") as r:
        assert (await r.json())["path_qs"] == "/openai/deployments/v1/models?x=1"


async def test_unknown_routes_are_404_error_json(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    async with aiohttp.ClientSession() as s:
        for path in ("/", "/v2/chat/completions", "/chat/completions", "/v1"):
            async with s.post(proxy.url + path, json={}) as r:
                assert r.status == 404, path
                assert (await r.json())["error"] == {
                    "message": f"unknown route: {path}",
                    "type": "invalid_request_error",
                    "code": "not_found",
                    "param": None,
                }
    assert upstream.seen == []


async def test_hop_by_hop_request_headers_are_not_forwarded(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    headers = {
        "Connection": "keep-alive, X-Private-Hop",
        "X-Private-Hop": "secret-for-the-next-hop",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic cHJveHk6cHc=",
        "Upgrade": "h2c",
        "x-shadow-tags": "billing",
        "x-shadow-omit": "content",
        "OpenAI-Organization": "org-123",
        "X-Custom": "kept",
        "User-Agent": "my-app/1.0",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.get(proxy.base_url + "/models", headers=headers) as r,
    ):
        assert r.status == 200
    seen = {k.lower(): v for k, v in upstream.seen[-1].headers.items()}
    for gone in (
        "x-private-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
        "x-shadow-tags",
        "x-shadow-omit",
    ):
        assert gone not in seen, gone
    assert seen["openai-organization"] == "org-123"
    assert seen["x-custom"] == "kept"
    assert seen["user-agent"] == "my-app/1.0"
    assert seen["host"] == f"127.0.0.1:{upstream.server.port}"  # type: ignore[union-attr]


async def test_hop_by_hop_response_headers_are_not_relayed(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    upstream.handlers[("GET", "/v1/models")] = hop_by_hop_answer
    async with aiohttp.ClientSession() as s, s.get(proxy.base_url + "/models") as r:
        assert r.status == 200
        assert "X-Hop-Only" not in r.headers
        assert "Proxy-Authenticate" not in r.headers
        assert "Trailer" not in r.headers
        assert r.headers["X-End-To-End"] == "2"
        assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_client_authorization_goes_to_production_when_proxy_has_no_key(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-client-own-key", max_retries=0)
    await client.chat.completions.create(model="m", messages=MESSAGES)
    await client.close()
    assert upstream.seen[-1].headers["Authorization"] == "Bearer sk-client-own-key"


async def test_production_key_replaces_the_clients(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(upstream.base_url, production={"api_key": "sk-proxy-prod"})
    async with aiohttp.ClientSession() as s:
        async with s.get(
            proxy.base_url + "/models", headers={"Authorization": "Bearer sk-client"}
        ) as r:
            assert r.status == 200
        async with s.get(proxy.base_url + "/models") as r:  # no client credentials at all
            assert r.status == 200
    assert [seen.headers.get("Authorization") for seen in upstream.seen] == [
        "Bearer sk-proxy-prod"
    ] * 2
    assert all("sk-client" not in str(seen.headers) for seen in upstream.seen)


async def test_request_ids_are_generated_or_taken_from_the_client(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.base_url + "/models") as r:
            first = r.headers["x-shadow-request-id"]
        async with s.get(proxy.base_url + "/models") as r:
            second = r.headers["x-shadow-request-id"]
        assert len(first) == 26
        assert first < second or id_time_ms(first) == id_time_ms(second)
        async with s.get(
            proxy.base_url + "/models", headers={"x-shadow-request-id": "app-order-42"}
        ) as r:
            assert r.headers["x-shadow-request-id"] == "app-order-42"
        async with s.get(
            proxy.base_url + "/models", headers={"x-shadow-request-id": "bad id/with space"}
        ) as r:
            replaced = r.headers["x-shadow-request-id"]
            assert replaced != "bad id/with space" and id_time_ms(replaced) is not None
        async with s.get(proxy.url + "/nowhere", headers={"x-shadow-request-id": "err-1"}) as r:
            assert r.status == 404 and r.headers["x-shadow-request-id"] == "err-1"


async def test_redirects_are_relayed_not_followed(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/v1/elsewhere")

    upstream.handlers[("GET", "/v1/files")] = moved
    async with (
        aiohttp.ClientSession() as s,
        s.get(proxy.base_url + "/files", allow_redirects=False) as r,
    ):
        assert r.status == 302
        assert r.headers["Location"] == "/v1/elsewhere"
    assert [seen.path_qs for seen in upstream.seen] == ["/v1/files"]


async def test_cookies_from_one_client_never_reach_another(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    async def set_cookie(request: web.Request) -> web.StreamResponse:
        resp = web.json_response({})
        resp.set_cookie("session", "client-a-secret")
        return resp

    upstream.handlers[("GET", "/v1/login")] = set_cookie
    async with aiohttp.ClientSession() as a, a.get(proxy.base_url + "/login") as r:
        assert "client-a-secret" in r.headers["Set-Cookie"]
    async with aiohttp.ClientSession() as b, b.get(proxy.base_url + "/models") as r:
        assert r.status == 200
    assert "Cookie" not in upstream.seen[-1].headers


async def test_one_keep_alive_pool_to_production(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """Sequential requests from different clients reuse one upstream connection."""
    for _ in range(5):
        async with aiohttp.ClientSession() as s, s.get(proxy.base_url + "/models") as r:
            assert r.status == 200
    assert len({seen.peer for seen in upstream.seen}) == 1
