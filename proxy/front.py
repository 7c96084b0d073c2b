"""The lean front: the proxy's own HTTP/1.1 server for the /v1 relay, aiohttp for the rest.

aiohttp's server costs about as much per request as everything else the proxy does (see
docs/benchmarks.md), so the live path has its own: an `asyncio.Protocol` that frames
requests itself, validates each request head with llhttp (`httptools`), and hands the body
to the shared /v1 path (`proxy.v1`). It takes only what it fully understands: an HTTP/1.1
request with a `Content-Length` body (or none) for a plain `/v1/...` path, with method
GET, POST, PUT, PATCH or DELETE. At the first request it does not take (admin, health,
metrics, HEAD, chunked uploads, upgrades, HTTP/1.0, odd paths, a head llhttp rejects) it
hands the whole connection, with every byte not yet handled, to aiohttp's server, which
then serves that connection to its end exactly as it would have without the front.

Like aiohttp's server it serves keep-alive and pipelined requests in order, answers
`Expect: 100-continue`, refuses a body over `server.body_limit_bytes` with 413, cancels a
request whose client disconnects, and drains gracefully: on shutdown idle connections
close, busy ones close after their answer, and what is still running when the grace period
ends is cancelled (and so recorded as dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import TYPE_CHECKING, Any, cast

import httptools
import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import body_too_large
from proxy.front_request import count_unserved, serve_request, write_error
from proxy.ids import REQUEST_ID_HEADER, request_id_for
from proxy.stall import StallWatch, stalled_error

if TYPE_CHECKING:
    from proxy.front_site import Front

log = structlog.get_logger("shadoweval.proxy")

_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE"})
# A plain /v1 path: no percent-escapes, dot segments, empty segments or fragments; anything
# else goes to aiohttp, whose routing decides what it means.
_SEGMENT = rb"[A-Za-z0-9\-._~!$&'()*+,;=:@]+"
# Segments separated by single slashes: linear to match, whatever the input.
_PLAIN_V1 = re.compile(rb"/v1/(?:%s(?:/%s)*/?)?(?:\?[^#\s]*)?" % (_SEGMENT, _SEGMENT))
_DOT_SEGMENT = re.compile(rb"/\.\.?(?:/|\?|$)")
MAX_HEAD_BYTES = 64 * 1024  # larger heads go to aiohttp, which answers them its own way
PIPELINE_BUFFER_BYTES = 1024 * 1024  # read no further ahead than this while busy
_DISCARD_S = 10.0  # how long a refused body is read and dropped before closing


class _Head:
    """llhttp's callbacks for one request head: the headers, as aiohttp decodes them."""

    __slots__ = ("complete", "headers", "raw")

    def __init__(self) -> None:
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.raw: list[tuple[bytes, bytes]] = []  # as sent: what production gets
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw.append((name, value))
        self.headers.add(
            name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")
        )

    def on_headers_complete(self) -> None:
        self.complete = True


class FrontProtocol(asyncio.Protocol):
    """One client connection served by the lean front (see the module docstring)."""

    def __init__(self, front: Front) -> None:
        self._front = front
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._task: asyncio.Task[Any] | None = None
        self._body_needed = -1  # bytes of body still to read for the pending head; -1: none
        # The request whose head was read and whose body is still arriving:
        # method, target, headers (decoded, and as sent), keep-alive, request id.
        self._pending: (
            tuple[str, str, CIMultiDictProxy[str], list[tuple[bytes, bytes]], bool, str] | None
        ) = None
        self._discard = 0  # bytes of a refused body still to drop
        self._scanned = 0  # bytes of the buffer already searched for the end of a head
        self._last_active = time.monotonic()
        self._read_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._closed = False
        self._stalled_out = False  # closed because the client stopped reading

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._front.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._last_active = time.monotonic()
        if self._discard:
            dropped = min(self._discard, len(data))
            self._discard -= dropped
            if self._discard == 0:
                self.abort()
            return
        self._buf += data
        if self._task is not None:
            if len(self._buf) > PIPELINE_BUFFER_BYTES and not self._read_paused:
                self._read_paused = True
                self._transport.pause_reading()  # type: ignore[union-attr]
            return
        self._advance()

    def eof_received(self) -> bool | None:
        return None  # a half-closed client is a gone client: close (as aiohttp does)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._front.connections.discard(self)
        if self._task is not None and not self._task.done() and not self._stalled_out:
            self._task.cancel()  # the client went away: stop relaying (recorded as dropped)
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- the Connection protocol of proxy.front_answer ----------------------------------

    def send(self, data: bytes) -> None:
        if self._closed or self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("client connection closed")
        self._transport.write(data)

    async def drained(self) -> None:
        if self._write_paused and not self._closed:
            self._write_waiter = asyncio.get_running_loop().create_future()
            assert self._transport is not None
            watch = StallWatch(self._transport, self._front.write_timeout_s, self._stalled)
            try:
                await self._write_waiter
            finally:
                watch.cancel()
                self._write_waiter = None
        if self._closed:
            if self._stalled_out:
                raise stalled_error(self._front.write_timeout_s)
            raise ConnectionResetError("client connection closed")

    def _stalled(self) -> None:
        """The client took nothing for `client_write_timeout_s`: give up on it."""
        log.warning("client stopped reading: connection closed",
                    waited_s=self._front.write_timeout_s)  # fmt: skip
        self._stalled_out = True  # the request's task wakes up to ClientStalled, not cancelled
        self._wake_writer()
        self.kill()

    def abort(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True  # nothing more is written or started on this connection
            self._transport.close()

    # -- framing ------------------------------------------------------------------------

    def close_if_idle_since(self, before: float) -> None:
        """Close the connection if no request runs and nothing arrived since `before`."""
        if self._task is None and self._last_active <= before:
            if self._pending is not None:
                self._drop_pending()
            self.abort()

    def kill(self) -> None:
        """Close at once, unsent bytes and all (a client that stopped reading)."""
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def _drop_pending(self) -> None:
        """A request still uploading its body when the connection closes: counted as 499."""
        assert self._pending is not None
        method, target, _, _, _, rid = self._pending
        self._pending, self._body_needed = None, -1
        count_unserved(self._front, method, target, rid, 499)

    def _wake_writer(self) -> None:
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _advance(self) -> None:
        """No request runs: start the next one, if the buffer holds enough of it."""
        if self._closed:
            return
        if self._pending is not None:
            self._take_body()
            return
        buf = self._buf
        if not buf:
            return
        # Search only what arrived since the last look (a head may come a byte at a time).
        start = max(0, self._scanned - 3)
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES or buf.find(b"\n\n", start) >= 0:
                self._hand_off()  # too long, or bare LF line ends: aiohttp decides
            else:
                self._scanned = len(buf)
            return
        self._scanned = 0  # the next search starts after this head
        if end + 4 > MAX_HEAD_BYTES or buf.count(b"\n", 0, end) != buf.count(b"\r\n", 0, end):
            self._hand_off()
            return
        line_end = buf.find(b"\r\n")
        parts = bytes(buf[:line_end]).split(b" ")
        if (
            len(parts) != 3
            or parts[2] != b"HTTP/1.1"
            or parts[0] not in _METHODS
            or _PLAIN_V1.fullmatch(parts[1]) is None
            or _DOT_SEGMENT.search(parts[1]) is not None
        ):
            self._hand_off()
            return
        head = _Head()
        parser = httptools.HttpRequestParser(head)
        try:
            parser.feed_data(bytes(buf[: end + 4]))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # aiohttp answers a malformed head with its own 400, an upgrade its own way
            self._hand_off()
            return
        headers = head.headers
        if (
            not head.complete
            or parser.should_upgrade()
            or "Transfer-Encoding" in headers
            or ("Expect" in headers and headers["Expect"].lower() != "100-continue")
        ):
            self._hand_off()
            return
        lengths = headers.getall("Content-Length", ())
        if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            self._hand_off()
            return
        length = int(lengths[0]) if lengths else 0
        del buf[: end + 4]
        # Not llhttp's should_keep_alive(): after a body-less message it has reset its flags.
        keep_alive = not self._front.draining and not any(
            token.strip().lower() == "close"
            for value in headers.getall("Connection", ())
            for token in value.split(",")
        )
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
        rid = request_id_for(headers.get(REQUEST_ID_HEADER))
        if length > self._front.body_limit:
            self._refuse_body(method, target, rid, length)
            return
        if length and "Expect" in headers:
            with contextlib.suppress(ConnectionError):
                self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._pending = (method, target, CIMultiDictProxy(headers), head.raw, keep_alive, rid)
        self._body_needed = length
        self._take_body()

    def _take_body(self) -> None:
        """Start the pending request once its whole body is buffered."""
        need = self._body_needed
        if len(self._buf) < need:
            return
        assert self._pending is not None
        method, target, headers, raw_headers, keep_alive, rid = self._pending
        self._pending, self._body_needed = None, -1
        body = bytes(self._buf[:need])
        del self._buf[:need]
        self._front.requests_served += 1
        self._task = self._front.tasks.spawn(
            serve_request(
                self._front, self, rid, method, target, headers, raw_headers, body, keep_alive
            ),
            "request",
        )
        self._task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[Any]) -> None:
        """The answer is complete: go on with the next request, or close."""
        self._task = None
        self._last_active = time.monotonic()
        if self._closed:
            return
        if (
            self._front.draining
            or task.cancelled()
            or task.exception() is not None
            or not task.result()
        ):
            self.abort()
            return
        if self._read_paused:
            self._read_paused = False
            self._transport.resume_reading()  # type: ignore[union-attr]
        self._advance()

    def _refuse_body(self, method: str, target: str, rid: str, length: int) -> None:
        """413 for a body over the limit; its bytes are read and dropped, then we close."""
        write_error(self, body_too_large(self._front.body_limit), rid, keep=False)
        count_unserved(self._front, method, target, rid, 413)
        # Closing with unread bytes would reset the connection before the client reads the
        # 413: our side ends after it (the client sees EOF), the body is read and dropped
        # (briefly), then the connection closes. A client that sent `Expect` may send the
        # body anyway (curl does after a second), so it gets the same treatment.
        dropped = min(length, len(self._buf))
        del self._buf[:dropped]
        self._discard = length - dropped
        transport = self._transport
        if self._discard == 0 or transport is None or transport.is_closing():
            self.abort()
            return
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(_DISCARD_S, self.abort)

    def _hand_off(self) -> None:
        """Give this connection, and every byte not yet handled, to aiohttp's server."""
        transport = self._transport
        assert transport is not None
        self._front.connections.discard(self)
        self._front.connections_handed_off += 1
        self._closed = True  # for this protocol; the connection lives on
        protocol = self._front.aiohttp_server()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            protocol.data_received(data)
        if self._read_paused:
            transport.resume_reading()
