"""The lean front on the wire: raw HTTP/1.1 to the proxy, so framing is exactly what is tested.

Keep-alive, pipelining, split writes, `Expect: 100-continue`, 413, hand-off to aiohttp's
server (first request or mid-connection), the framing of relayed answers, client disconnects,
graceful drain, and answers byte-identical to those of aiohttp's server alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

import proxy.front_site as front_module
from proxy.front_site import Front, FrontSite
from proxy.lake.reader import connect
from tests.proxy.conftest import (
    CHAT_TEXT,
    STREAM_PIECES,
    FakeUpstream,
    ProxyFactory,
    RunningProxy,
    chat_chunk,
    eventually,
    hop_by_hop_answer,
    sse,
    stalled_stream,
)

READ_TIMEOUT_S = 3.0  # a bug fails the test instead of hanging it
IN_FLIGHT = "shadoweval_http_requests_in_flight"
# Headers allowed to differ between the front and aiohttp's server: the clock, the server's
# name, the framing, and the per-request id.
_NOT_COMPARED = frozenset(
    {"date", "server", "content-length", "transfer-encoding", "x-shadow-request-id"}
)

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# -- raw HTTP/1.1 helpers -------------------------------------------------------------------


@dataclass
class Reply:
    """One HTTP/1.1 response as read off the wire."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]  # as sent: order, case and repeats kept
    body: bytes  # de-chunked
    chunks: list[bytes] | None  # the chunks of a chunked body; None for other framings

    @property
    def h(self) -> CIMultiDict[str]:
        return CIMultiDict(self.headers)

    def json(self) -> Any:
        return orjson.loads(self.body)

    def comparable_headers(self) -> list[tuple[str, str]]:
        """The headers that must be the same whichever server wrote the answer."""
        return [(n, v) for n, v in self.headers if n.lower() not in _NOT_COMPARED]


def build(
    method: str,
    target: str,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    *,
    version: str = "HTTP/1.1",
) -> bytes:
    """A request's bytes: Host, then Content-Length when there is a body, then `headers`."""
    lines = [f"{method} {target} {version}", "Host: proxy.test"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chat_body(stream: bool = False, model: str = "gpt-test") -> bytes:
    payload: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    if stream:
        payload["stream"] = True
    return orjson.dumps(payload)


def chat_request(stream: bool = False, headers: list[tuple[str, str]] | None = None) -> bytes:
    headers = [("Content-Type", "application/json"), *(headers or [])]
    return build("POST", "/v1/chat/completions", chat_body(stream), headers)


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)


async def _read_reply(reader: asyncio.StreamReader, head_request: bool) -> Reply:
    line = await reader.readuntil(b"\r\n")
    version, status, *reason = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, colon, value = line.decode("latin-1").partition(":")
        assert colon and name == name.strip(), f"malformed header line {line!r}"
        headers.append((name, value.strip()))
    fields = CIMultiDict(headers)
    code = int(status)
    chunks: list[bytes] | None = None
    if head_request or code < 200 or code in (204, 304):
        body = b""
    elif "chunked" in fields.get("Transfer-Encoding", "").lower():
        assert "Content-Length" not in fields, "both Content-Length and chunked"
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            assert data.endswith(b"\r\n"), f"chunk not followed by CRLF: {data[-10:]!r}"
            if size == 0:
                break  # no trailers: the last chunk's CRLF ends the body
            chunks.append(data[:-2])
        body = b"".join(chunks)
    elif "Content-Length" in fields:
        assert len(fields.getall("Content-Length")) == 1
        body = await reader.readexactly(int(fields["Content-Length"]))
    else:
        body = await reader.read()  # delimited by the end of the connection
    return Reply(version, code, reason[0] if reason else "", headers, body, chunks)


async def read_reply(
    reader: asyncio.StreamReader, *, head: bool = False, within: float = READ_TIMEOUT_S
) -> Reply:
    """Read one response: status line, headers, and a body by its framing (`head`: none)."""
    return await asyncio.wait_for(_read_reply(reader, head), within)


async def read_to_eof(reader: asyncio.StreamReader, within: float = READ_TIMEOUT_S) -> bytes:
    """Everything until the server closes (raises on a reset or if it does not close)."""
    return await asyncio.wait_for(reader.read(), within)


@contextlib.asynccontextmanager
async def connection(proxy: RunningProxy) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def exchange(proxy: RunningProxy, raw: bytes, *, head: bool = False) -> Reply:
    """One request on a new connection, its one response."""
    async with connection(proxy) as (reader, writer):
        await send(writer, raw)
        return await read_reply(reader, head=head)


async def exchange_direct(upstream: FakeUpstream, body: bytes) -> bytes:
    """Production's own answer body for a chat request."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            upstream.base_url + "/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        return await r.read()


def front_of(proxy: RunningProxy) -> Front:
    assert isinstance(proxy.site, FrontSite)
    return proxy.site.front


def sse_events(body: bytes) -> list[bytes]:
    return [event for event in body.split(b"\n\n") if event]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slow(delay_s: float, answer: dict[str, Any]) -> Callable[[web.Request], Any]:
    """An upstream handler that answers `answer` after `delay_s`."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay_s)
        return web.json_response(answer)

    return handler


@contextlib.contextmanager
def loop_must_not_block(seconds: float) -> Iterator[None]:
    """Interrupt whatever holds the (single) thread for longer than `seconds`.

    A blocked event loop cannot time itself out; SIGALRM can. Whatever Python or regex code
    runs at that moment raises TimeoutError (for a protocol callback: the connection dies).
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the event loop was blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    # The suite's own time limit (pytest-timeout) uses the same timer: set it again after.
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.01))


def assert_same_reply(via_front: Reply, via_plain: Reply) -> None:
    """Status line, body and headers equal, but for date, server, framing and id."""
    assert (via_front.version, via_front.status, via_front.reason) == (
        via_plain.version,
        via_plain.status,
        via_plain.reason,
    )
    assert via_front.body == via_plain.body
    assert via_front.comparable_headers() == via_plain.comparable_headers()


@pytest.fixture
async def plain(upstream: FakeUpstream, start_proxy: ProxyFactory) -> RunningProxy:
    """A second proxy on the same upstream, served by aiohttp's server alone."""
    return await start_proxy(upstream.base_url, server={"lean_front": False})


# -- keep-alive, pipelining, split writes ---------------------------------------------------


async def test_two_requests_on_one_keep_alive_connection_are_served_by_the_front(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """Two requests on one connection: both 200 with the right bodies and their own ids,
    both served by the front itself, on one client connection."""
    async with connection(proxy) as (reader, writer):
        await send(writer, chat_request())
        first = await read_reply(reader)
        await send(writer, build("GET", "/v1/models"))
        second = await read_reply(reader)
    assert (first.status, second.status) == (200, 200)
    assert first.json()["choices"][0]["message"]["content"] == CHAT_TEXT
    assert [m["id"] for m in second.json()["data"]] == ["gpt-test"]
    ids = [r.h["x-shadow-request-id"] for r in (first, second)]
    assert all(ids) and ids[0] != ids[1]
    assert [r.h.getall("x-shadow-request-id") for r in (first, second)] == [[ids[0]], [ids[1]]]
    assert "Connection" not in first.h and "Connection" not in second.h  # kept alive
    front = front_of(proxy)
    assert (front.requests_served, front.connections_handed_off) == (2, 0)
    assert [s.path_qs for s in upstream.seen] == ["/v1/chat/completions", "/v1/models"]


async def test_client_request_id_is_echoed(proxy: RunningProxy) -> None:
    """A client's own acceptable x-shadow-request-id comes back; an unacceptable one is
    replaced by a fresh id."""
    async with connection(proxy) as (reader, writer):
        await send(writer, build("GET", "/v1/models", None, [("x-shadow-request-id", "t-42")]))
        own = await read_reply(reader)
        await send(writer, build("GET", "/v1/models", None, [("x-shadow-request-id", "a b/c")]))
        bad = await read_reply(reader)
    assert own.h.getall("x-shadow-request-id") == ["t-42"]
    assert bad.h["x-shadow-request-id"] not in ("", "a b/c")


@pytest.mark.parametrize("count", [2, 3])
async def test_pipelined_requests_in_one_write_are_answered_in_order(
    proxy: RunningProxy, upstream: FakeUpstream, count: int
) -> None:
    """Requests written in one write get complete, correctly framed answers in request
    order, even when the first one is the slowest to answer."""
    upstream.handlers[("POST", "/v1/embeddings")] = slow(0.2, {"slow": True})
    requests = [
        build("POST", "/v1/embeddings", b'{"input": "x"}'),
        build("GET", "/v1/models"),
        chat_request(),
    ][:count]
    async with connection(proxy) as (reader, writer):
        await send(writer, b"".join(requests))
        replies = [await read_reply(reader) for _ in range(count)]
        # Nothing else follows, and the connection is still open for more.
        await send(writer, build("GET", "/v1/models"))
        after = await read_reply(reader)
    assert [r.status for r in replies] == [200] * count
    assert replies[0].json() == {"slow": True}
    assert replies[1].json()["object"] == "list"
    if count == 3:
        assert replies[2].json()["choices"][0]["message"]["content"] == CHAT_TEXT
    for reply in replies:
        assert reply.h["Content-Length"] == str(len(reply.body))
    assert len({r.h["x-shadow-request-id"] for r in replies}) == count
    assert after.status == 200
    front = front_of(proxy)
    assert (front.requests_served, front.connections_handed_off) == (count + 1, 0)


async def test_a_request_arriving_in_many_small_writes_is_served(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """The head byte by byte, then the body in small pieces: one request, served whole."""
    raw = chat_request()
    head_end = raw.index(b"\r\n\r\n") + 4
    head, body = raw[:head_end], raw[head_end:]
    async with connection(proxy) as (reader, writer):
        for i in range(len(head)):
            await send(writer, head[i : i + 1])
            await asyncio.sleep(0.001)
        for i in range(0, len(body), 7):
            await send(writer, body[i : i + 7])
            await asyncio.sleep(0.001)
        reply = await read_reply(reader)
    assert reply.status == 200
    assert reply.json()["choices"][0]["message"]["content"] == CHAT_TEXT
    assert upstream.seen[-1].body == body
    front = front_of(proxy)
    assert (front.requests_served, front.connections_handed_off) == (1, 0)


# -- Expect: 100-continue and 413 -----------------------------------------------------------


async def test_expect_100_continue_is_answered_before_the_body(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """With `Expect: 100-continue` the client gets `100 Continue` before sending its body,
    then the answer; production sees the body and no Expect header."""
    raw = chat_request(headers=[("Expect", "100-continue")])
    head_end = raw.index(b"\r\n\r\n") + 4
    async with connection(proxy) as (reader, writer):
        await send(writer, raw[:head_end])
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await send(writer, raw[head_end:])
        reply = await read_reply(reader)
    assert reply.status == 200
    assert reply.json()["choices"][0]["message"]["content"] == CHAT_TEXT
    assert upstream.seen[-1].body == raw[head_end:]
    assert "Expect" not in upstream.seen[-1].headers
    assert front_of(proxy).connections_handed_off == 0


@pytest.mark.parametrize("body_size", [1001, 50_000])
async def test_oversized_body_is_refused_with_413_which_the_client_receives(
    upstream: FakeUpstream, start_proxy: ProxyFactory, body_size: int
) -> None:
    """A body over the limit: 413 error JSON with Connection: close, then a clean close
    (no reset, even with 50 KB unread), and production never sees the request."""
    proxy = await start_proxy(upstream.base_url, server={"body_limit_bytes": 1000})
    body = b"x" * body_size
    async with connection(proxy) as (reader, writer):
        await send(
            writer, build("POST", "/v1/chat/completions", body, [("x-shadow-request-id", "big-1")])
        )
        reply = await read_reply(reader)
        assert await read_to_eof(reader) == b""
    assert reply.status == 413
    error = reply.json()["error"]
    assert error["code"] == "request_too_large" and "1000 bytes" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert reply.h["Connection"] == "close"
    assert reply.h["Content-Type"] == "application/json"
    assert reply.h["x-shadow-request-id"] == "big-1"
    assert upstream.seen == []
    labels = {"route": "/v1/chat/completions", "status": "413"}
    assert proxy.registry.get_sample_value("shadoweval_http_requests_total", labels) == 1


async def test_oversized_body_with_expect_is_refused_before_it_is_sent(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    """`Expect: 100-continue` with a Content-Length over the limit: the 413 comes at once,
    without a `100 Continue`, and the connection closes; the body is never sent."""
    proxy = await start_proxy(upstream.base_url, server={"body_limit_bytes": 1000})
    raw = build("POST", "/v1/chat/completions", b"y" * 5000, [("Expect", "100-continue")])
    async with connection(proxy) as (reader, writer):
        await send(writer, raw[: raw.index(b"\r\n\r\n") + 4])
        reply = await read_reply(reader)
        assert await read_to_eof(reader) == b""
    assert reply.status == 413
    assert reply.json()["error"]["code"] == "request_too_large"
    assert reply.h["Connection"] == "close"
    assert upstream.seen == []


async def test_body_at_the_limit_is_served(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    """A body exactly at the limit is relayed."""
    proxy = await start_proxy(upstream.base_url, server={"body_limit_bytes": 1000})
    reply = await exchange(proxy, build("PUT", "/v1/files/f-1", b"z" * 1000))
    assert reply.status == 200
    assert upstream.seen[-1].body == b"z" * 1000


# -- hand-off to aiohttp's server -----------------------------------------------------------


async def test_mid_connection_hand_off_serves_the_rest_of_the_connection(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """A /v1 request, then /healthz and /metrics on the same connection: all answered; the
    connection went to aiohttp once, which also serves a /v1 request after them."""
    async with connection(proxy) as (reader, writer):
        await send(writer, build("GET", "/v1/models"))
        models = await read_reply(reader)
        await send(writer, build("GET", "/healthz"))
        health = await read_reply(reader)
        await send(writer, build("GET", "/metrics"))
        metrics = await read_reply(reader)
        await send(writer, chat_request())
        chat = await read_reply(reader)
    assert models.status == 200 and models.json()["object"] == "list"
    assert health.status == 200 and health.json() == {"status": "ok"}
    assert metrics.status == 200 and b"shadoweval_http_requests_total" in metrics.body
    assert chat.status == 200
    assert chat.json()["choices"][0]["message"]["content"] == CHAT_TEXT
    assert "x-shadow-request-id" in chat.h
    front = front_of(proxy)
    assert (front.requests_served, front.connections_handed_off) == (1, 1)
    assert len(upstream.seen) == 2


async def test_pipelined_hand_off_keeps_the_unhandled_bytes(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """A /v1 request and two others in one write: aiohttp gets every byte the front did
    not handle, and answers in order."""
    raw = build("GET", "/v1/models") + build("GET", "/readyz") + chat_request()
    async with connection(proxy) as (reader, writer):
        await send(writer, raw)
        replies = [await read_reply(reader) for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200]
    assert replies[1].json() == {"status": "ready"}
    assert replies[2].json()["choices"][0]["message"]["content"] == CHAT_TEXT
    front = front_of(proxy)
    assert (front.requests_served, front.connections_handed_off) == (1, 1)


CHUNKED_BODY = chat_body()
HAND_OFF_CASES: dict[str, tuple[bytes, bool]] = {
    "head": (build("HEAD", "/v1/models"), True),
    "http-1.0": (build("GET", "/v1/models", version="HTTP/1.0"), False),
    "chunked-body": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy.test\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(
            b"%x\r\n%s\r\n" % (len(part), part)
            for part in (CHUNKED_BODY[:10], CHUNKED_BODY[10:25], CHUNKED_BODY[25:])
        )
        + b"0\r\n\r\n",
        False,
    ),
    "escaped-slash": (build("GET", "/v1/files/file-abc%2Fx/content?limit=2"), False),
    "dot-segment": (build("GET", "/v1/files/../models"), False),
    "double-slash": (build("GET", "/v1//models"), False),
    "options": (build("OPTIONS", "/v1/models"), False),
    "header-without-colon": (
        b"GET /v1/models HTTP/1.1\r\nHost: proxy.test\r\nNoColonHere\r\n\r\n",
        False,
    ),
    "bad-content-length": (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 1x\r\n\r\n",
        False,
    ),
    "expect-other": (
        build("POST", "/v1/embeddings", b"{}", [("Expect", "something-else")]),
        False,
    ),
}


# Over 64 KiB of head in lines aiohttp accepts (each under its 8190-byte field limit).
BIG_HEAD = build("GET", "/v1/models", None, [(f"X-Big-{i}", "b" * 7000) for i in range(10)])


@pytest.mark.parametrize("case", list(HAND_OFF_CASES))
async def test_hand_off_cases_are_answered_as_aiohttp_alone_answers_them(
    proxy: RunningProxy, plain: RunningProxy, upstream: FakeUpstream, case: str
) -> None:
    """A first request the front does not take is answered exactly as aiohttp's server
    alone answers it (status, headers, body), and the connection was handed off."""
    raw, head = HAND_OFF_CASES[case]
    via_plain = await exchange(plain, raw, head=head)
    plain_seen = [(s.method, s.path_qs, s.body) for s in upstream.seen]
    upstream.seen.clear()
    via_front = await exchange(proxy, raw, head=head)
    assert_same_reply(via_front, via_plain)
    assert [(s.method, s.path_qs, s.body) for s in upstream.seen] == plain_seen
    front = front_of(proxy)
    assert (front.requests_served, front.connections_handed_off) == (0, 1)
    if case == "chunked-body":
        assert via_front.status == 200 and plain_seen[0][2] == CHUNKED_BODY
    if case == "header-without-colon":
        assert via_front.status == 400


async def test_a_head_over_64_kib_arriving_in_pieces_goes_to_aiohttp(
    proxy: RunningProxy, plain: RunningProxy
) -> None:
    """A head still incomplete after 64 KiB is handed to aiohttp, which answers it as it
    would alone."""
    raw = BIG_HEAD

    async def in_pieces(target: RunningProxy) -> Reply:
        async with connection(target) as (reader, writer):
            for i in range(0, len(raw), 10_000):  # 70,000 bytes read, no end of head yet
                await send(writer, raw[i : i + 10_000])
                await asyncio.sleep(0.005)
            return await read_reply(reader)

    via_plain, via_front = await in_pieces(plain), await in_pieces(proxy)
    assert via_front.status == via_plain.status == 200
    assert via_front.body == via_plain.body
    assert front_of(proxy).connections_handed_off == 1


async def test_a_head_over_64_kib_arriving_at_once_goes_to_aiohttp(
    proxy: RunningProxy, plain: RunningProxy
) -> None:
    """The 64 KiB head limit holds however the head arrives: in one write too."""
    via_plain = await exchange(plain, BIG_HEAD)
    via_front = await exchange(proxy, BIG_HEAD)
    assert (via_front.status, via_front.body) == (via_plain.status, via_plain.body)
    assert front_of(proxy).connections_handed_off == 1


async def test_an_upgrade_request_is_answered_as_aiohttp_alone_answers_it(
    proxy: RunningProxy, plain: RunningProxy
) -> None:
    """`curl --http2` on http:// asks for h2c with `Connection: Upgrade, HTTP2-Settings`;
    aiohttp ignores the upgrade and answers over HTTP/1.1, and so must the front."""
    raw = build(
        "GET",
        "/v1/models",
        None,
        [
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ],
    )
    via_plain = await exchange(plain, raw)
    assert via_plain.status == 200
    via_front = await exchange(proxy, raw)
    assert (via_front.status, via_front.body) == (via_plain.status, via_plain.body)


async def test_a_head_with_bare_lf_line_ends_is_refused_not_left_hanging(
    proxy: RunningProxy, plain: RunningProxy
) -> None:
    """A head with LF line ends is malformed for aiohttp, which answers 400 at once; the
    front must hand it over rather than wait for a CRLF CRLF that never comes."""
    raw = b"GET /v1/models HTTP/1.1\nHost: proxy.test\n\n"
    via_plain = await exchange(plain, raw)
    assert via_plain.status == 400
    async with connection(proxy) as (reader, writer):
        await send(writer, raw)
        via_front = await read_reply(reader, within=1.0)
    assert (via_front.status, via_front.body) == (via_plain.status, via_plain.body)


async def test_a_long_segment_before_a_percent_escape_does_not_block_the_loop(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """`/v1/files/<40 characters>%2Fcontent` is handed off and answered at once; the event
    loop is never blocked by checking the path (SIGALRM interrupts it after 10 s; a
    backtracking pattern would take hours)."""
    target = "/v1/files/" + "a" * 40 + "%2Fcontent"
    with loop_must_not_block(10.0):
        reply = await exchange(proxy, build("GET", target))
    assert reply.status == 200
    assert reply.json()["path_qs"] == target


# -- relayed answers ------------------------------------------------------------------------


async def test_a_streamed_answer_is_chunked_with_its_events_intact(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """An SSE answer still arriving is relayed chunked; de-chunked it is byte for byte
    production's stream, every event whole."""
    upstream.chunk_delay_s = 0.01  # the head is relayed before the stream has ended
    direct = await exchange_direct(upstream, chat_body(stream=True))
    reply = await exchange(proxy, chat_request(stream=True))
    assert reply.status == 200
    assert reply.h["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in reply.h
    assert reply.h["Content-Type"] == "text/event-stream"
    assert reply.h["x-request-id"] == "req_stream_1"
    assert reply.chunks and all(reply.chunks)
    assert reply.body == direct
    events = sse_events(reply.body)
    assert events[: len(STREAM_PIECES)] == [
        sse(chat_chunk(piece)).rstrip(b"\n") for piece in STREAM_PIECES
    ]
    assert events[-1] == b"data: [DONE]"


async def test_a_whole_json_answer_has_its_content_length(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """A JSON answer goes out with a Content-Length equal to its body, never chunked."""
    reply = await exchange(proxy, chat_request())
    assert reply.status == 200
    assert "Transfer-Encoding" not in reply.h
    assert reply.h.getall("Content-Length") == [str(len(reply.body))]
    assert reply.h["x-request-id"] == "req_upstream_1"
    assert reply.body == await exchange_direct(upstream, chat_body())


async def test_a_chunked_production_answer_is_framed_by_the_front(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """A short chunked answer from production is framed anew, never passed through in
    production's chunk framing: with its own Content-Length if it had arrived whole when
    its head was read, else chunked (which of the two depends on timing)."""

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"a": 1}')
        await resp.write_eof()
        return resp

    upstream.handlers[("GET", "/v1/models")] = chunked
    reply = await exchange(proxy, build("GET", "/v1/models"))
    assert reply.status == 200 and reply.body == b'{"a": 1}'
    framing = (reply.h.get("Content-Length"), reply.h.get("Transfer-Encoding"))
    assert framing in ((str(len(reply.body)), None), (None, "chunked"))


async def test_hop_by_hop_headers_stay_and_end_to_end_ones_pass(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """Production's hop-by-hop headers (and those its Connection header names) are not
    relayed; its own end-to-end headers pass in order, repeats kept."""

    upstream.handlers[("GET", "/v1/models")] = hop_by_hop_answer
    reply = await exchange(proxy, build("GET", "/v1/models"))
    assert reply.status == 200 and reply.body == b"{}"
    names = {name.lower() for name, _ in reply.headers}
    assert not names & {"x-hop-only", "keep-alive", "proxy-authenticate", "trailer"}
    assert "connection" not in names  # kept alive: nothing of production's Connection header
    assert reply.h["X-End-To-End"] == "2"
    assert reply.h.getall("Set-Cookie") == ["a=1", "b=2"]
    assert reply.h["Content-Length"] == "2"


async def test_request_headers_reach_production_as_the_bytes_sent(
    proxy: RunningProxy, plain: RunningProxy, upstream: FakeUpstream
) -> None:
    """Through either server, production gets the client's header bytes unchanged (even
    bytes that are not UTF-8), without hop-by-hop headers, those Connection names, or the
    proxy's own controls."""
    raw = build(
        "POST",
        "/v1/chat/completions",
        chat_body(),
        [("X-Label", "caf\xe9"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
         ("x-shadow-tags", "a"), ("X-Kept", "yes")],
    )  # fmt: skip
    for front in (proxy, plain):
        assert (await exchange(front, raw)).status == 200
        seen = {name.lower(): value for name, value in upstream.seen[-1].headers.items()}
        assert seen["x-label"].encode("utf-8", "surrogateescape") == b"caf\xe9"
        assert seen["x-kept"] == "yes"
        assert not {"x-hop", "x-shadow-tags", "connection"} & set(seen)


async def test_productions_own_request_id_header_is_replaced(
    proxy: RunningProxy, plain: RunningProxy, upstream: FakeUpstream
) -> None:
    """When production itself answers with an x-shadow-request-id (another proxy behind
    this one), the client gets exactly one: its request's id, as through aiohttp."""

    async def tagged(request: web.Request) -> web.StreamResponse:
        return web.json_response({}, headers={"x-shadow-request-id": "from-production"})

    upstream.handlers[("GET", "/v1/models")] = tagged
    raw = build("GET", "/v1/models", None, [("x-shadow-request-id", "mine-1")])
    assert (await exchange(plain, raw)).h.getall("x-shadow-request-id") == ["mine-1"]
    assert (await exchange(proxy, raw)).h.getall("x-shadow-request-id") == ["mine-1"]


async def test_a_204_answer_has_no_body_and_the_connection_goes_on(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """A bodiless status is relayed without a body or chunk framing; the next request on
    the connection is read correctly after it."""

    async def no_content(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204, headers={"X-Deleted": "yes"})

    upstream.handlers[("DELETE", "/v1/files/f-1")] = no_content
    async with connection(proxy) as (reader, writer):
        await send(writer, build("DELETE", "/v1/files/f-1"))
        deleted = await read_reply(reader)
        await send(writer, build("GET", "/v1/models"))
        models = await read_reply(reader)
    assert deleted.status == 204 and deleted.h["X-Deleted"] == "yes"
    assert "Transfer-Encoding" not in deleted.h
    assert models.status == 200 and models.json()["object"] == "list"


# -- disconnects and drain ------------------------------------------------------------------


async def test_client_disconnect_mid_stream_ends_the_request_as_dropped(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    """Closing the socket while a slow stream is relayed cancels the request: production's
    handler is cancelled, nothing is left running, and the answer is recorded as dropped."""
    proxy = await start_proxy(upstream.base_url, production={"read_timeout_s": 60})

    upstream.handlers[("POST", "/v1/chat/completions")] = stalled_stream("partial answer")
    front = front_of(proxy)
    async with connection(proxy) as (reader, writer):
        await send(writer, chat_request(stream=True))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in head
        size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), READ_TIMEOUT_S), 16)
        first = await asyncio.wait_for(reader.readexactly(size), READ_TIMEOUT_S)
        assert first == sse(chat_chunk("partial answer"))
        assert len(front.tasks) == 1
    await eventually(lambda: upstream.cancelled == 1)
    await eventually(lambda: len(front.tasks) == 0 and not front.connections)
    assert proxy.registry.get_sample_value(IN_FLIGHT) == 0
    dropped = {"kind": "dropped"}
    assert proxy.registry.get_sample_value("shadoweval_upstream_errors_total", dropped) == 1
    await proxy.stop()  # flushes the recorder
    con = connect(proxy.settings.storage.data_dir)
    rows = con.execute("SELECT status, error, error_detail, output_text FROM responses").fetchall()
    assert rows == [(200, "dropped", "client disconnected", "partial answer")]


async def test_client_disconnect_while_waiting_for_production_cancels_it(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    """A client gone before production's headers arrive cancels the production call."""
    proxy = await start_proxy(upstream.base_url, production={"read_timeout_s": 60})
    upstream.handlers[("POST", "/v1/embeddings")] = slow(30, {})
    front = front_of(proxy)
    async with connection(proxy) as (_, writer):
        await send(writer, build("POST", "/v1/embeddings", b'{"input": "x"}'))
        await eventually(lambda: upstream.active == 1)
    await eventually(lambda: upstream.cancelled == 1)
    await eventually(lambda: len(front.tasks) == 0)
    assert proxy.registry.get_sample_value(IN_FLIGHT) == 0


async def test_stop_finishes_busy_requests_and_closes_idle_connections(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    """On stop an idle keep-alive connection is closed at once, a request in flight still
    gets its whole answer, and its connection closes after it."""
    proxy = await start_proxy(upstream.base_url)
    upstream.handlers[("POST", "/v1/embeddings")] = slow(0.5, {"late": "but whole"})
    async with connection(proxy) as (idle_r, idle_w), connection(proxy) as (busy_r, busy_w):
        await send(idle_w, build("GET", "/v1/models"))
        assert (await read_reply(idle_r)).status == 200
        await send(busy_w, build("POST", "/v1/embeddings", b'{"input": "x"}'))
        await eventually(lambda: upstream.active == 1)
        stopping = asyncio.create_task(proxy.stop())
        assert await read_to_eof(idle_r, within=1.0) == b""
        assert not stopping.done()
        reply = await read_reply(busy_r)
        assert reply.status == 200 and reply.json() == {"late": "but whole"}
        assert await read_to_eof(busy_r) == b""
        await asyncio.wait_for(stopping, 10)


async def test_stop_cancels_what_outlives_the_grace_period(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    """A request still running when the grace period ends is cancelled and its connection
    closed; stop does not wait for production."""
    proxy = await start_proxy(
        upstream.base_url, server={"shutdown_grace_s": 0.3}, production={"read_timeout_s": 60}
    )
    upstream.handlers[("POST", "/v1/embeddings")] = slow(30, {})
    async with connection(proxy) as (reader, writer):
        await send(writer, build("POST", "/v1/embeddings", b'{"input": "x"}'))
        await eventually(lambda: upstream.active == 1)
        t0 = time.monotonic()
        await asyncio.wait_for(proxy.stop(), 5)
        assert time.monotonic() - t0 < 3
        assert await read_to_eof(reader) == b""
    await eventually(lambda: upstream.cancelled == 1)


async def test_idle_connections_are_closed_after_the_keep_alive_timeout(
    upstream: FakeUpstream, start_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle keep-alive connection, or one holding half a head, is closed once idle for
    the keep-alive timeout; one whose request runs longer than that is not."""
    monkeypatch.setattr(front_module, "KEEPALIVE_S", 0.2)
    monkeypatch.setattr(front_module, "_SWEEP_S", 0.05)
    proxy = await start_proxy(upstream.base_url)
    upstream.handlers[("POST", "/v1/embeddings")] = slow(0.6, {"slow": True})
    async with (
        connection(proxy) as (idle_r, idle_w),
        connection(proxy) as (half_r, half_w),
        connection(proxy) as (busy_r, busy_w),
    ):
        await send(idle_w, build("GET", "/v1/models"))
        assert (await read_reply(idle_r)).status == 200
        await send(half_w, b"GET /v1/models HTTP/1.1\r\nHost: pro")
        await send(busy_w, build("POST", "/v1/embeddings", b'{"input": "x"}'))
        t0 = time.monotonic()
        # Closed after the keep-alive timeout (0.2 s), not left open: generous bounds, for a
        # loaded machine.
        assert await read_to_eof(idle_r, within=5.0) == b""
        assert await read_to_eof(half_r, within=5.0) == b""
        assert time.monotonic() - t0 < 3.0
        reply = await read_reply(busy_r)
        assert reply.status == 200 and reply.json() == {"slow": True}
        assert time.monotonic() - t0 >= 0.5


async def test_reading_pauses_behind_a_slow_request_and_resumes_after_it(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """More than 1 MiB pipelined behind a slow request: the front stops reading ahead,
    then serves the buffered request whole once the slow one is answered."""
    upstream.handlers[("POST", "/v1/embeddings")] = slow(0.3, {"slow": True})

    async def size(request: web.Request) -> web.StreamResponse:
        return web.json_response({"size": len(upstream.seen[-1].body)})

    upstream.handlers[("PUT", "/v1/files/big")] = size
    big = b"b" * (1536 * 1024)
    async with connection(proxy) as (reader, writer):
        await send(writer, build("POST", "/v1/embeddings", b'{"input": "x"}'))
        writer.write(build("PUT", "/v1/files/big", big))  # more than the front reads ahead
        await eventually(lambda: any(c._read_paused for c in front_of(proxy).connections))
        first = await read_reply(reader)
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        second = await read_reply(reader)
    assert first.json() == {"slow": True}
    assert second.status == 200 and second.json() == {"size": len(big)}
    front = front_of(proxy)
    assert (front.requests_served, front.connections_handed_off) == (2, 0)


# -- the same answers as aiohttp's server alone ---------------------------------------------


async def compare(front_proxy: RunningProxy, plain_proxy: RunningProxy, raw: bytes) -> Reply:
    """Send `raw` to both; everything but date, server, framing and id must be equal."""
    via_plain = await exchange(plain_proxy, raw)
    via_front = await exchange(front_proxy, raw)
    assert_same_reply(via_front, via_plain)
    assert "x-shadow-request-id" in via_front.h and "x-shadow-request-id" in via_plain.h
    return via_front


async def test_answers_are_the_same_through_the_front_and_aiohttp_alone(
    proxy: RunningProxy, plain: RunningProxy, upstream: FakeUpstream
) -> None:
    """A JSON chat answer, an SSE stream, the model list and a relayed 404 error are the
    same through both servers (statuses, reasons, bodies, headers)."""

    async def not_found(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": {"message": "No such file", "type": "invalid_request_error"}},
            status=404,
            reason="Nope",
            headers={"x-request-id": "req_404"},
        )

    upstream.handlers[("GET", "/v1/files/missing")] = not_found
    chat = await compare(proxy, plain, chat_request())
    stream = await compare(proxy, plain, chat_request(stream=True))
    models = await compare(proxy, plain, build("GET", "/v1/models?limit=5"))
    missing = await compare(proxy, plain, build("GET", "/v1/files/missing"))
    assert chat.status == stream.status == models.status == 200
    assert stream.body.endswith(b"data: [DONE]\n\n")
    assert (missing.status, missing.reason) == (404, "Nope")
    assert front_of(proxy).requests_served == 4
    # Counted the same way too: route pattern and status.
    assert request_counts(proxy) == request_counts(plain)
    assert proxy.registry.get_sample_value(IN_FLIGHT) == 0


def request_counts(proxy: RunningProxy) -> dict[tuple[str, str], float]:
    """`shadoweval_http_requests_total` by (route, status)."""
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in proxy.registry.collect()
        if family.name == "shadoweval_http_requests"
        for sample in family.samples
        if sample.name == "shadoweval_http_requests_total"
    }


async def test_unreachable_production_is_the_same_502_through_both(
    start_proxy: ProxyFactory,
) -> None:
    """With production unreachable, both servers answer the same 502 error JSON."""
    production = f"http://127.0.0.1:{closed_port()}/v1"
    front_proxy = await start_proxy(production)
    plain_proxy = await start_proxy(production, server={"lean_front": False})
    reply = await compare(front_proxy, plain_proxy, chat_request())
    assert reply.status == 502
    assert reply.json()["error"]["code"] == "bad_gateway"


async def test_unreachable_production_is_a_502_and_the_connection_stays_usable(
    start_proxy: ProxyFactory,
) -> None:
    """Through the front: 502 error JSON with the request id, and the same connection
    answers the next request."""
    proxy = await start_proxy(f"http://127.0.0.1:{closed_port()}/v1")
    async with connection(proxy) as (reader, writer):
        await send(writer, chat_request(headers=[("x-shadow-request-id", "down-1")]))
        first = await read_reply(reader)
        await send(writer, build("GET", "/v1/models"))
        second = await read_reply(reader)
    for reply in (first, second):
        assert reply.status == 502
        error = reply.json()["error"]
        assert error["code"] == "bad_gateway" and error["type"] == "upstream_error"
        assert error["message"].startswith("upstream unreachable")
        assert reply.h["Content-Type"] == "application/json"
        assert reply.h["Content-Length"] == str(len(reply.body))
        assert "Connection" not in reply.h
    assert first.h["x-shadow-request-id"] == "down-1"
    assert second.h["x-shadow-request-id"] not in ("", "down-1")
    front = front_of(proxy)
    assert (front.requests_served, front.connections_handed_off) == (2, 0)


# -- through aiohttp's client ---------------------------------------------------------------


async def test_aiohttp_client_on_one_connection(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """aiohttp's client reuses its one connection for JSON and streamed answers, all
    served by the front."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as s:
        for _ in range(3):
            async with s.post(proxy.base_url + "/chat/completions", data=chat_body()) as r:
                assert r.status == 200
                assert (await r.json())["choices"][0]["message"]["content"] == CHAT_TEXT
        async with s.post(proxy.base_url + "/chat/completions", data=chat_body(True)) as r:
            events = [e async for e in r.content.iter_any()]
            assert b"".join(events) == await exchange_direct(upstream, chat_body(True))
        async with s.get(proxy.base_url + "/models") as r:
            assert (await r.json())["object"] == "list"
        front = front_of(proxy)
        assert len(front.connections) == 1
    assert (front.requests_served, front.connections_handed_off) == (5, 0)
    await eventually(lambda: not front.connections)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(build("POST", "/v1/embeddings", b"{}", [("Connection", "close")]), id="post"),
        pytest.param(build("GET", "/v1/models", None, [("Connection", "close")]), id="get"),
    ],
)
async def test_connection_close_request_gets_its_answer_then_the_close(
    proxy: RunningProxy, first: bytes
) -> None:
    """A request with `Connection: close` is answered with `Connection: close`, then the
    front closes; a request pipelined after it is not served."""
    async with connection(proxy) as (reader, writer):
        await send(writer, first + build("GET", "/v1/models"))
        reply = await read_reply(reader)
        assert reply.status == 200 and reply.h.get("Connection") == "close"
        assert await read_to_eof(reader, within=1.0) == b""
    assert front_of(proxy).requests_served == 1


async def test_aiohttp_client_expect_100_continue(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """aiohttp's client with `expect100=True` gets the answer through the front."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(proxy.base_url + "/embeddings", data=b'{"input": "x"}', expect100=True) as r,
    ):
        assert r.status == 200
        assert (await r.json())["object"] == "list"
    assert upstream.seen[-1].body == b'{"input": "x"}'
    assert front_of(proxy).connections_handed_off == 0


# -- found in review ------------------------------------------------------------------------


async def test_oversized_body_sent_despite_expect_still_gets_the_413(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    """A client that sends `Expect: 100-continue` and then the body without waiting (curl
    does after a second) reads the 413, not a connection reset."""
    proxy = await start_proxy(upstream.base_url, server={"body_limit_bytes": 1000})
    raw = build("POST", "/v1/chat/completions", b"y" * 4_000_000, [("Expect", "100-continue")])
    async with connection(proxy) as (reader, writer):
        writer.write(raw)  # all of it at once; drained as the proxy reads and drops it
        reply = await read_reply(reader)
        await writer.drain()
    assert reply.status == 413
    assert reply.json()["error"]["code"] == "request_too_large"
    assert upstream.seen == []


async def test_stop_drains_front_and_handed_off_connections_within_one_grace_period(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    """Stopping drains both servers' connections at once, not one after the other: an idle
    connection that was handed to aiohttp is closed at once, not served, and the whole stop
    takes what aiohttp's own shutdown takes (it waits the grace period, cancels, then waits
    up to the grace period again), not the front's grace period on top of it."""
    proxy = await start_proxy(
        upstream.base_url, server={"shutdown_grace_s": 2.0}, production={"read_timeout_s": 60}
    )
    upstream.handlers[("POST", "/v1/embeddings")] = slow(30, {})
    chunked_upload = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n4\r\n{ }\n\r\n0\r\n\r\n"
    )
    async with (
        connection(proxy) as (_front_r, front_w),
        connection(proxy) as (_aio_r, aio_w),
        connection(proxy) as (idle_r, idle_w),
    ):
        await send(front_w, build("POST", "/v1/embeddings", b'{"input": "x"}'))
        await send(aio_w, chunked_upload)  # handed to aiohttp, then stuck on production
        await send(idle_w, build("GET", "/healthz"))  # handed to aiohttp, then idle
        assert (await read_reply(idle_r)).status == 200
        await eventually(lambda: upstream.active == 2)
        t0 = time.monotonic()
        stopping = asyncio.create_task(proxy.stop())
        assert await read_to_eof(idle_r, within=1.5) == b""  # well inside the grace period
        await asyncio.wait_for(stopping, 20)
        elapsed = time.monotonic() - t0
    assert 1.9 <= elapsed < 5.5, elapsed  # aiohttp's 2 x 2 s, not 2 s more for the front
    assert front_of(proxy).connections_handed_off == 2


async def test_an_upload_cut_by_the_drain_is_counted_as_499(
    upstream: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    """A request whose body is still arriving when the proxy stops never reaches production;
    it is counted (status 499) as aiohttp's server counts it."""
    proxy = await start_proxy(upstream.base_url)
    raw = build("POST", "/v1/embeddings", b'{"input": "' + b"x" * 1000 + b'"}')
    async with connection(proxy) as (reader, writer):
        await send(writer, raw[: len(raw) - 500])
        await eventually(lambda: any(c._pending is not None for c in front_of(proxy).connections))
        await proxy.stop()
        assert await read_to_eof(reader) == b""
    assert request_counts(proxy) == {("/v1/embeddings", "499"): 1.0}
    assert upstream.seen == []


def test_a_head_arriving_a_byte_at_a_time_is_searched_once() -> None:
    """The end of a head is looked for only in the bytes that arrived since the last look,
    so a head fed one byte per read costs linear, not quadratic, time."""
    from proxy.front import FrontProtocol

    class Transport:
        def is_closing(self) -> bool:
            return False

        def write(self, data: bytes) -> None:
            raise AssertionError("nothing is answered before the head is complete")

    class FakeFront:
        def __init__(self) -> None:
            self.connections: set[Any] = set()

    proto = FrontProtocol(FakeFront())  # type: ignore[arg-type]
    proto.connection_made(Transport())  # type: ignore[arg-type]
    head = b"GET /v1/models HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 30_000
    searched = 0
    original_find = bytearray.find

    class CountingBuffer(bytearray):
        def find(self, sub: Any, start: Any = 0, *rest: Any) -> int:
            nonlocal searched
            searched += len(self) - (start or 0)
            return original_find(self, sub, start, *rest)

    proto._buf = CountingBuffer()
    for i in range(len(head)):
        proto.data_received(head[i : i + 1])
    # Each byte is looked at a few times (two patterns, a 3-byte overlap), not once per read.
    assert searched < 10 * len(head), searched
