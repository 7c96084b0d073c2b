"""Fault-injection tests for proxy/upstream.py, the relay's lean HTTP/1.1 keep-alive client.

Every upstream is a real loopback server: mostly a scripted raw TCP server that reads the
request bytes and writes exact answer bytes (framing, closes, garbage, stalls), and an
aiohttp server for the large streamed body.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.forward import response_headers
from proxy.upstream import (
    HIGH_WATER,
    Slots,
    UpstreamError,
    UpstreamInvalid,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)
HANG = ...  # a reply meaning: never answer, wait until the client hangs up


class Upstream:
    """What a scripted server saw: connections accepted, (conn, head, body) per request."""

    def __init__(self) -> None:
        self.port = self.accepted = 0
        self.requests: list[tuple[int, bytes, bytes]] = []
        self.arrived = asyncio.Event()  # set at every request
        self.ended: asyncio.Queue[int] = asyncio.Queue()  # conn numbers whose script ended

    def on_conn(self, conn: int) -> list[bytes]:
        return [head for c, head, _ in self.requests if c == conn]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def replying(reply: Any, then: str | None = None):
    """Each request gets `reply` (bytes, None = close, HANG, or f(srv, conn, head));
    then the connection stays open, or `then` is "close" or "hang" (until the client closes)."""

    async def script(srv: Upstream, conn: int, reader: Any, writer: Any) -> None:
        while (req := await read_request(reader)) is not None:
            srv.requests.append((conn, *req))
            srv.arrived.set()
            out = reply(srv, conn, req[0]) if callable(reply) else reply
            if out is None:
                return
            if out is not HANG:
                writer.write(out)
                await writer.drain()
            if out is HANG or then == "hang":
                await reader.read()
            if out is HANG or then:
                return

    return script


def pool_at(port: int, **kw: Any) -> UpstreamPool:
    kw = {"limit": 4, "connect_timeout": 0.5, "read_timeout": 0.5, "total_timeout": 1.0} | kw
    return UpstreamPool(f"http://127.0.0.1:{port}", **kw)


@pytest.fixture
async def start():
    """start(script, **pool_kw) -> (Upstream, UpstreamPool); all closed at teardown."""
    servers, pools, tasks = [], [], set()

    async def _start(script: Any, **pool_kw: Any) -> tuple[Upstream, UpstreamPool]:
        srv = Upstream()

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            tasks.add(asyncio.current_task())
            srv.accepted += 1
            conn = srv.accepted
            try:
                await script(srv, conn, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                writer.close()
                srv.ended.put_nowait(conn)

        servers.append(await asyncio.start_server(on_conn, "127.0.0.1", 0))
        srv.port = servers[-1].sockets[0].getsockname()[1]
        pools.append(pool_at(srv.port, **pool_kw))
        return srv, pools[-1]

    yield _start
    for pool in pools:
        await pool.close()
    for server in servers:
        server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def read_all(resp: UpstreamResponse) -> bytes:
    data = b""
    while chunk := await resp.read():
        data += chunk
    return data


async def fetch(pool: UpstreamPool, method: str = "GET", target: str = "/", headers=(), body=b""):
    resp = await pool.request(method, target, list(headers), body)
    data = await read_all(resp)
    resp.release()
    return resp, data


async def test_post_sends_exact_head_and_body_and_parses_the_answer(start):
    answer = b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nContent-Type: application/json\r\n"
    answer += b'set-cookie: b=2\r\nContent-Length: 11\r\n\r\n{"ok":true}'
    srv, pool = await start(replying(answer))
    headers = [(b"X-A", b"1"), (b"Authorization", b"Bearer t"), (b"x-a", b"2")]
    resp, data = await fetch(pool, "POST", "/v1/chat?x=1", headers, b'{"q": 1}\n')
    host = f"Host: 127.0.0.1:{srv.port}\r\n".encode()
    head = b"POST /v1/chat?x=1 HTTP/1.1\r\n" + host + b"X-A: 1\r\nAuthorization: Bearer t\r\n"
    assert srv.requests == [(1, head + b"x-a: 2\r\nContent-Length: 9\r\n\r\n", b'{"q": 1}\n')]
    assert (resp.status, resp.reason, data) == (201, "Created", b'{"ok":true}')
    assert resp.headers.getall("SET-COOKIE") == ["a=1", "b=2"]
    assert resp.headers["content-type"] == "application/json"
    await fetch(pool, "GET", "/m")  # a bodiless GET carries no Content-Length
    assert srv.requests[1] == (1, b"GET /m HTTP/1.1\r\n" + host + b"\r\n", b"")


@pytest.mark.parametrize(
    ("answer", "then", "body", "conns"),
    [
        (OK, None, b"ok", 1),  # keep-alive: one connection for all requests
        (CHUNKED, None, b"hello world", 1),  # de-chunked, then reused
        (b"HTTP/1.1 204 No Content\r\nContent-Type: x/y\r\n\r\n", None, b"", 1),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", "close", b"until the end", 3),
        # The server says close but keeps the socket open: the client drops it anyway.
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + OK[17:], "hang", b"ok", 3),
        (OK, "close", b"ok", 3),  # the server closes each idle connection: transparent
    ],
    ids=["length", "chunked", "204", "until-close", "connection-close", "server-closes-idle"],
)
async def test_framing_and_connection_reuse(start, answer, then, body, conns):
    srv, pool = await start(replying(answer, then))
    for _ in range(3):
        resp, data = await fetch(pool)
        assert (data, resp.body_complete) == (body, True)
    assert srv.accepted == conns


async def test_head_answer_has_no_body_despite_content_length_and_is_not_reused(start):
    def reply(srv, conn, head):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" if head[:4] == b"HEAD" else OK

    srv, pool = await start(replying(reply))
    resp, data = await fetch(pool, "HEAD", "/file")
    assert (resp.status, resp.headers["Content-Length"], data) == (200, "10", b"")
    assert b"Content-Length" not in srv.requests[0][1]
    assert (await fetch(pool))[1] == b"ok"
    assert srv.accepted == 2


async def test_keep_alive_race_retries_once_on_a_fresh_connection(start):
    # Connection 1 answers its first request, then closes on the second without a byte.
    srv, pool = await start(
        replying(lambda srv, c, _: OK if c > 1 or len(srv.on_conn(c)) == 1 else None)
    )
    assert (await fetch(pool))[1] == b"ok"
    assert (await fetch(pool))[1] == b"ok"
    assert srv.accepted == 2 and [c for c, _, _ in srv.requests] == [1, 1, 2]


async def test_on_sent_runs_once_after_the_first_write_and_never_without_one(start):
    # Connection 1 answers its first request, then closes on the second without a byte, so
    # the second request is written twice (the keep-alive race): still one on_sent.
    srv, pool = await start(
        replying(lambda srv, c, _: OK if c > 1 or len(srv.on_conn(c)) == 1 else None)
    )
    calls: list[int] = []

    def sent() -> None:
        calls.append(srv.accepted)  # runs right after the write, before the answer is read

    for _ in range(2):
        resp = await pool.request("GET", "/", [], b"", on_sent=sent)
        assert await read_all(resp) == b"ok"
        resp.release()
    assert calls == [1, 1] and srv.accepted == 2
    with socket.socket() as sock:  # bound, not listening: connecting is refused
        sock.bind(("127.0.0.1", 0))
        refused = pool_at(sock.getsockname()[1])
        with pytest.raises(UpstreamError):
            await refused.request("GET", "/", [], b"", on_sent=sent)
        await refused.close()
    assert calls == [1, 1]  # nothing was written: no on_sent


async def test_a_failing_on_sent_closes_its_connection_and_frees_its_slot(start):
    srv, pool = await start(replying(OK), limit=1)

    def broken() -> None:
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        await pool.request("GET", "/", [], b"", on_sent=broken)
    assert await asyncio.wait_for(srv.ended.get(), 5) == 1  # closed, not pooled
    assert (await fetch(pool))[1] == b"ok"  # the one slot is free again
    assert srv.accepted == 2


async def test_fresh_connection_closed_before_answer_fails_without_retry_loop(start):
    # Only the very first request is answered; every other one meets a close.
    srv, pool = await start(replying(lambda srv, c, _: OK if len(srv.requests) == 1 else None))
    assert (await fetch(pool))[1] == b"ok"
    with pytest.raises(UpstreamError) as err:  # reused conn 1 closes: one retry, on conn 2
        await pool.request("GET", "/", [], b"")
    assert err.value.kind == "connect" and srv.accepted == 2
    with pytest.raises(UpstreamError) as err:  # a fresh connection: no retry at all
        await pool.request("GET", "/", [], b"")
    assert err.value.kind == "connect" and srv.accepted == 3 and len(srv.requests) == 4


async def test_body_cut_halfway_returns_partial_bytes_then_fails(start):
    _, pool = await start(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "close"))
    resp = await pool.request("GET", "/", [], b"")
    got = b""
    with pytest.raises(UpstreamError) as err:
        while chunk := await resp.read():
            got += chunk
    assert (got, err.value.kind, resp.body_complete) == (b"hello", "connect", False)
    resp.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"HELLO\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # fails at read()
    ],
)
async def test_garbage_answer_is_invalid(start, garbage):
    srv, pool = await start(replying(garbage))
    with pytest.raises(UpstreamInvalid) as err:
        await read_all(await pool.request("GET", "/", [], b""))
    assert err.value.kind == "invalid"
    assert await srv.ended.get() == 1  # the client closed the connection


async def test_unanswered_request_times_out(start):
    _, pool = await start(replying(HANG), read_timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout) as err:
        await pool.request("GET", "/", [], b"")
    assert err.value.kind == "timeout" and isinstance(err.value, TimeoutError)
    assert 0.15 < time.monotonic() - t0 < 5  # a loaded machine may be late, never early


async def test_body_stalling_after_headers_times_out(start):
    stall = replying(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "hang")
    _, pool = await start(stall, read_timeout=0.2)
    resp = await pool.request("GET", "/", [], b"")
    assert await resp.read() == b"abc"
    with pytest.raises(UpstreamTimeout):
        await resp.read()
    resp.close()


async def test_total_timeout_bounds_a_slow_trickle(start):
    async def script(srv, conn, reader, writer):  # a byte every 50 ms resets read_timeout
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            writer.write(b".")
            await writer.drain()
            await asyncio.sleep(0.05)

    # The trickle would take 5 s and never leaves read_timeout's window; total_timeout ends it.
    _, pool = await start(script, read_timeout=2, total_timeout=1.0)
    t0 = time.monotonic()
    resp = await pool.request("GET", "/", [], b"")
    got = b""
    with pytest.raises(UpstreamTimeout):
        while chunk := await resp.read():
            got += chunk
    assert 1.0 <= time.monotonic() - t0 < 4.5 and len(got) >= 3
    resp.close()


async def test_connection_refused_is_a_connect_error():
    with socket.socket() as sock:  # bound, not listening: connecting is refused
        sock.bind(("127.0.0.1", 0))
        pool = pool_at(sock.getsockname()[1])
        with pytest.raises(UpstreamError) as err:
            await pool.request("GET", "/", [], b"")
        assert err.value.kind == "connect"
        await pool.close()


async def test_limit_makes_the_third_request_wait_for_a_released_answer(start):
    srv, pool = await start(replying(OK), limit=2)
    r1 = await pool.request("GET", "/1", [], b"")
    r2 = await pool.request("GET", "/2", [], b"")
    # A request cancelled while waiting for a slot must not give a slot back.
    waiting = asyncio.create_task(pool.request("GET", "/never", [], b""))
    done, _ = await asyncio.wait({waiting}, timeout=0.05)
    assert not done
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    third = asyncio.create_task(fetch(pool, target="/3"))
    done, _ = await asyncio.wait({third}, timeout=0.1)
    assert not done and len(srv.requests) == 2
    assert await read_all(r1) == b"ok"
    r1.release()
    assert (await third)[1] == b"ok"
    assert [head.split(b" ")[1] for _, head, _ in srv.requests] == [b"/1", b"/2", b"/3"]
    r2.close()  # close() frees a slot as well: two answers can be held again
    async with asyncio.timeout(1):
        held = [await pool.request("GET", "/", [], b"") for _ in range(2)]
    for resp in held:
        resp.close()


async def test_a_second_release_or_close_of_an_answer_changes_nothing(start):
    srv, pool = await start(replying(OK), limit=2)
    first, data = await fetch(pool)  # released once: its connection is idle in the pool
    assert data == b"ok"
    first.release()  # twice must not pool the connection twice
    second = await pool.request("GET", "/", [], b"")  # reuses that connection
    first.close()  # nor may a late close() cut the answer now using it
    assert await read_all(second) == b"ok"
    second.release()
    assert (await fetch(pool))[1] == b"ok"
    assert srv.accepted == 1


async def test_slots_are_released_after_errors_and_cancellation(start):
    def reply(srv, conn, head):
        path = head.split(b" ")[1]
        return {b"/bad": b"NOT HTTP\r\n\r\n", b"/drop": None, b"/hang": HANG}.get(path, OK)

    srv, pool = await start(replying(reply), limit=2)
    async with asyncio.timeout(2):  # a leaked slot would block here rather than fail
        for _ in range(3):
            with pytest.raises(UpstreamInvalid):
                await pool.request("GET", "/bad", [], b"")
            with pytest.raises(UpstreamError):
                await pool.request("GET", "/drop", [], b"")
            srv.arrived.clear()
            task = asyncio.create_task(pool.request("GET", "/hang", [], b""))
            await srv.arrived.wait()  # the request is on the wire, waiting for headers
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        held = [await pool.request("GET", "/", [], b"") for _ in range(2)]
    for resp in held:
        resp.close()


async def test_large_body_read_slowly_is_flow_controlled_and_intact():
    body = bytes(range(256)) * (4 * 1024 * 4)  # 4 MiB

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # no length: aiohttp sends it chunked
        await resp.prepare(request)
        for i in range(0, len(body), 65536):
            await resp.write(body[i : i + 65536])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/big", handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    pool = pool_at(server.port, total_timeout=5.0)
    try:
        resp = await pool.request("GET", "/big", [], b"")
        parts = []
        while chunk := await resp.read():
            parts.append(chunk)
            await asyncio.sleep(0.002)  # a slow consumer
        resp.release()
        assert b"".join(parts) == body
        assert max(map(len, parts)) <= 2 * HIGH_WATER  # reading paused past the high water
    finally:
        await pool.close()
        await server.close()


async def test_response_headers_pass_as_the_bytes_production_sent(start):
    """Hop-by-hop headers (and those named in Connection, in any case) are dropped; the rest
    keep their order, repeats and bytes, even bytes that are not UTF-8."""
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"CONNECTION: keep-alive, X-Hop\r\nx-hop: 1\r\nX-Name: caf\xe9\r\n"
        b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\n{}"
    )
    _, pool = await start(replying(answer))
    resp, _ = await fetch(pool)
    assert response_headers(resp) == [
        (b"Content-Type", b"application/json"),
        (b"X-Name", b"caf\xe9"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"2"),
    ]
    assert resp.headers.getall("set-cookie") == ["a=1", "b=2"]
    assert resp.headers["X-Name"].encode("utf-8", "surrogateescape") == b"caf\xe9"


async def test_header_with_line_break_raises_and_sends_nothing(start):
    srv, pool = await start(replying(OK), limit=1)
    bad = [(b"X-A", b"1\r\nX-Evil: 1"), (b"X-A", b"1\n"), (b"X\rB", b"1"), (b"X-B", b"\r")]
    for name, value in bad:
        with pytest.raises(ValueError, match="line break"):
            await pool.request("GET", "/", [(b"X-Fine", b"1"), (name, value)], b"")
    with pytest.raises(ValueError, match="request line"):
        await pool.request("GET", "/x\r\nX-Evil: 1", [], b"")
    assert (await fetch(pool))[1] == b"ok"  # and the only slot was not taken
    assert srv.accepted == 1 and len(srv.requests) == 1
    assert b"Evil" not in srv.requests[0][1]


async def test_close_closes_idle_and_busy_connections(start):
    def reply(srv, conn, head):
        if b"/idle" in head:
            return OK
        length = b"Content-Length: 10\r\n" if b"/busy" in head else b""  # or: until close
        return b"HTTP/1.1 200 OK\r\n" + length + b"\r\nabc"

    srv, pool = await start(replying(reply))
    assert (await fetch(pool, target="/idle"))[1] == b"ok"  # conn 1 now idle in the pool
    busy = await pool.request("GET", "/busy", [], b"")  # the idle conn 1 is reused
    other = await pool.request("GET", "/eof", [], b"")  # conn 2: our close is not its end
    assert await busy.read() == b"abc"
    assert await fetch(pool, target="/idle")  # conn 3: idle again
    await pool.close()
    for resp in (busy, other):
        with pytest.raises(UpstreamError) as err:
            await read_all(resp)
        assert err.value.kind == "connect"
        resp.close()
    async with asyncio.timeout(1):  # the server saw all three connections hang up
        assert {await srv.ended.get() for _ in range(3)} == {1, 2, 3}
    with pytest.raises(UpstreamError, match="closed"):
        await pool.request("GET", "/", [], b"")
    assert srv.accepted == 3


async def test_connections_idle_too_long_are_closed_and_busy_ones_kept(start, monkeypatch):
    """The pool closes a connection left idle `_IDLE_S` (before the server might), whether
    the sweep finds it or a request would have reused it; one in steady use stays open."""
    monkeypatch.setattr("proxy.upstream._IDLE_S", 0.4)
    srv, pool = await start(replying(OK))
    assert (await fetch(pool))[1] == b"ok"
    async with asyncio.timeout(5):  # the sweep (every _IDLE_S / 4) closed it
        assert await srv.ended.get() == 1
    monkeypatch.setattr("proxy.upstream._IDLE_S", 2.0)  # slack for a loaded machine
    for _ in range(8):  # never idle for long: the same connection throughout
        assert (await fetch(pool))[1] == b"ok"
        await asyncio.sleep(0.1)
    assert srv.accepted == 2 and srv.ended.empty()
    monkeypatch.setattr("proxy.upstream._IDLE_S", 0.15)  # stale before the next sweep
    await asyncio.sleep(0.2)
    assert (await fetch(pool))[1] == b"ok"  # not sent on the stale connection
    assert srv.accepted == 3 and {c for c, _, _ in srv.requests[-1:]} == {3}
    await pool.close()


async def test_unsolicited_bytes_on_an_idle_connection_make_it_unusable(start):
    go = asyncio.Event()

    async def script(srv, conn, reader, writer):
        if conn > 1:
            return await replying(OK)(srv, conn, reader, writer)
        await read_request(reader)  # answer once, then talk while idle
        writer.write(OK)
        await go.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        await reader.read()

    srv, pool = await start(script)
    assert (await fetch(pool))[1] == b"ok"
    go.set()
    assert await srv.ended.get() == 1  # the client dropped the talking connection
    assert (await fetch(pool))[1] == b"ok"
    assert srv.accepted == 2


async def test_informational_answer_in_its_own_packet_is_skipped(start):
    async def script(srv, conn, reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the scripted pause: the 200 comes as a second packet
        writer.write(OK)
        await reader.read()

    _, pool = await start(script)
    resp, data = await fetch(pool)
    assert (resp.status, data) == (200, b"ok")


# -- an unasked-for answer, a full pool ------------------------------------------------


async def test_second_answer_in_the_same_packet_does_not_leak_into_the_body(start):
    stale = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
    srv, pool = await start(replying(lambda srv, conn, head: OK + stale if conn == 1 else OK))
    resp = await pool.request("GET", "/", [], b"")
    got = b""
    while chunk := await resp.read():  # the answer asked for is whole and intact
        got += chunk
    resp.release()  # ...but its connection is not pooled again
    assert got == b"ok"
    assert (await fetch(pool))[1] == b"ok"
    assert srv.accepted == 2


async def test_waiting_for_a_slot_is_bounded_by_total_timeout(start):
    _, pool = await start(replying(OK), limit=1, read_timeout=0.2, total_timeout=0.2)
    held = await pool.request("GET", "/", [], b"")
    try:
        async with asyncio.timeout(5):  # only a wait that is never bounded reaches this
            with pytest.raises(UpstreamTimeout):
                await pool.request("GET", "/", [], b"")
    finally:
        held.close()


# -- https --------------------------------------------------------------------------------


@pytest.fixture
def tls_cert(tmp_path: Any) -> tuple[Any, Any]:
    """A self-signed certificate for `localhost` and its key, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a loopback certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_upstream_verifies_its_certificate_and_keeps_the_connection(tls_cert):
    """Production is usually https: TLS with SNI and verification, over one connection."""
    cert, key = tls_cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    peers: set[Any] = set()

    async def handle(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(body=await request.read(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/echo", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kw = {"limit": 2, "connect_timeout": 2, "read_timeout": 2, "total_timeout": 5}
    trusting = UpstreamPool(
        f"https://localhost:{port}/v1", ssl_context=ssl.create_default_context(cafile=cert), **kw
    )
    untrusting = UpstreamPool(f"https://localhost:{port}/v1", **kw)
    try:
        for body in (b'{"n": 1}', b'{"n": 2}'):
            _, data = await fetch(trusting, "POST", "/v1/echo", body=body)
            assert data == body
        assert len(peers) == 1  # both requests on one kept-alive TLS connection
        with pytest.raises(UpstreamError) as err:  # an unknown issuer is refused
            await untrusting.request("POST", "/v1/echo", [], b"{}")
        assert err.value.kind == "connect" and "CERTIFICATE" in str(err.value).upper()
    finally:
        await trusting.close()
        await untrusting.close()
        await runner.cleanup()


async def test_slots_hand_out_at_most_the_limit_in_arrival_order():
    """The pool's slots: never more than `limit` held, waiters served first come first,
    and a wait cancelled (or timed out) holds nothing, even when cancelled just as a
    slot was handed to it."""
    slots = Slots(2, asyncio.get_running_loop())
    assert slots.take_now() and slots.take_now() and not slots.take_now()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await slots.take()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(4)]
    await asyncio.sleep(0)
    tasks[1].cancel()  # cancelled while waiting
    slots.give()  # -> 0
    slots.give()  # -> 2 (1 was cancelled)
    tasks[3].cancel()
    await asyncio.sleep(0)
    assert order == [0, 2]
    slots.give()  # 3 was cancelled while its wait had not ended: the slot stays free
    await asyncio.gather(*tasks, return_exceptions=True)
    assert slots.take_now() and not slots.take_now()
    late = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    slots.give()  # handed to `late`...
    late.cancel()  # ...cancelled before it ran: passed on, not lost
    await asyncio.gather(late, return_exceptions=True)
    assert late.cancelled() and slots.take_now() and not slots.take_now()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await slots.take()
    slots.give()
    assert slots.take_now()
