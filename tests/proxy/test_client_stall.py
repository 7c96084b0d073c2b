"""A client that stops reading its answer is disconnected after `server.client_write_timeout_s`.

Without the bound, such a client would hold its connection, the proxy's send buffer and the
connection to production (whose answer the proxy stops reading) for as long as it liked. The
client here is a raw socket with a small receive buffer that sends a request and never reads;
production answers with an endless stream, or with one body far larger than the socket
buffers. Both HTTP servers are tested: the lean front and aiohttp's.
"""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest
from aiohttp import web

from proxy.lake.reader import connect
from tests.proxy.conftest import FakeUpstream, ProxyFactory, chat_chunk, eventually, sse

STALL_S = 0.5
BIG_BODY_BYTES = 24 * 1024 * 1024  # far beyond what loopback socket buffers hold


async def endless_stream(request: web.Request) -> web.StreamResponse:
    """An SSE answer that never ends; it stops when the proxy stops reading it."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    event = sse(chat_chunk("x" * 16_000))
    while True:
        await resp.write(event)
        await asyncio.sleep(0.001)


async def huge_answer(request: web.Request) -> web.Response:
    """One JSON answer of 24 MiB."""
    text = "y" * BIG_BODY_BYTES
    body = orjson.dumps({"choices": [{"index": 0, "message": {"content": text}}]})
    return web.Response(body=body, content_type="application/json")


async def send_and_never_read(port: int, stream: bool, rcvbuf: int = 4096) -> socket.socket:
    """Send one chat request from a socket with a small receive buffer; read nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    body = orjson.dumps(
        {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    await asyncio.get_running_loop().sock_sendall(sock, head + body)
    return sock


@pytest.mark.parametrize("lean_front", [True, False], ids=["front", "aiohttp"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_a_client_that_stops_reading_is_disconnected_and_production_released(
    upstream: FakeUpstream, start_proxy: ProxyFactory, lean_front: bool, stream: bool
) -> None:
    upstream.handlers[("POST", "/v1/chat/completions")] = endless_stream if stream else huge_answer
    proxy = await start_proxy(
        upstream.base_url,
        server={"lean_front": lean_front, "client_write_timeout_s": STALL_S},
    )
    sock = await send_and_never_read(proxy.port, stream)
    try:
        started = time.monotonic()
        # The proxy gives up on the client: nothing is in flight, production is let go.
        await eventually(lambda: upstream.active == 0 and upstream.seen != [], within=10)
        await eventually(
            lambda: proxy.registry.get_sample_value("shadoweval_http_requests_in_flight") == 0,
            within=10,
        )
        assert time.monotonic() - started < STALL_S + 8
        # Counted as a request the client did not take to its end, as nginx counts it.
        answered = {"route": "/v1/chat/completions", "status": "499"}
        assert proxy.registry.get_sample_value("shadoweval_http_requests_total", answered) == 1
        # The client finds its connection closed once it reads again.
        sock.setblocking(True)
        sock.settimeout(5)
        received = 0
        with _reads_to_the_end():  # an endless stream ends: the connection was cut
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        if not stream:
            assert received < BIG_BODY_BYTES  # and the whole answer never arrived
    finally:
        sock.close()
    await proxy.stop()  # flushes the lake
    rows = (
        connect(proxy.settings.storage.data_dir)
        .execute("SELECT status, error, error_detail FROM responses")
        .fetchall()
    )
    assert rows == [(200, "dropped", "client stopped reading")]


class _reads_to_the_end:
    """Reading a connection the proxy aborted ends in EOF or a reset; both are fine."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return kind is None or kind is ConnectionResetError


@pytest.mark.parametrize("lean_front", [True, False], ids=["front", "aiohttp"])
async def test_a_client_that_reads_slowly_but_steadily_gets_its_whole_answer(
    upstream: FakeUpstream, start_proxy: ProxyFactory, lean_front: bool
) -> None:
    """The bound is on reading nothing, not on reading slowly. The client reads 16 KiB every
    0.3 s for 4.2 s, about 160 KiB per timeout (3 s), less than one of the chunks the proxy
    queues at a time (progress is measured from after a chunk is queued), then the rest at
    full speed: all 24 MiB arrive. (A timeout of several sips, so that one stall of the
    machine between two sips cannot look like a client that stopped.)"""
    upstream.handlers[("POST", "/v1/chat/completions")] = huge_answer
    proxy = await start_proxy(
        upstream.base_url, server={"lean_front": lean_front, "client_write_timeout_s": 3.0}
    )
    sock = await send_and_never_read(proxy.port, stream=False, rcvbuf=64 * 1024)
    loop = asyncio.get_running_loop()
    data = bytearray()
    sips = 0
    try:
        while True:
            size = 16 * 1024 if sips < 14 else 1 << 20
            chunk = await asyncio.wait_for(loop.sock_recv(sock, size), 10)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = bytes(data).partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
            sips += 1
            if sips <= 14:
                await asyncio.sleep(0.3)
    finally:
        sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(orjson.loads(body)["choices"][0]["message"]["content"]) == BIG_BODY_BYTES
