"""One HTTP/1.1 keep-alive connection of `proxy.upstream`'s pool, and what it raises.

`Connection` is an asyncio Protocol around llhttp's response parser (through `httptools`):
it writes one request at a time, hands the answer's head to the waiting request, buffers
body bytes for `UpstreamResponse.read` (pausing the socket past `HIGH_WATER` unread bytes)
and decides whether it may go back to the pool. See `proxy/upstream.py` for the semantics
the relay relies on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import httptools

from proxy.upstream_response import UpstreamResponse, decode

if TYPE_CHECKING:
    from proxy.upstream import Slots, UpstreamPool

# Unread body bytes past which the socket is paused until the relay catches up.
HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    """The upstream exchange failed; `kind` is connect | timeout | invalid."""

    kind = "connect"


class UpstreamTimeout(UpstreamError, TimeoutError):
    """A bounded wait ran out."""

    kind = "timeout"


class UpstreamInvalid(UpstreamError):
    """The upstream's bytes were not a valid HTTP/1.1 answer."""

    kind = "invalid"


class _ExtraAnswer(Exception):
    """Raised inside the parser to stop it at bytes nobody asked for."""


class _Disconnected(UpstreamError):
    """The connection closed; `early` when not one byte of the answer had arrived."""

    def __init__(self, message: str, *, early: bool) -> None:
        super().__init__(message)
        self.early = early


class Connection(asyncio.Protocol):
    """One keep-alive connection: the transport, llhttp's parser and the answer's buffer."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0  # loop time it went back to the pool
        self._deadline = 0.0
        self._read_timeout = 0.0
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._reason = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._got_bytes = False
        self._head_only = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._complete = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = False
        self._until_eof = False  # the answer has neither length nor chunking
        self._extra = False  # bytes of a second, unasked-for answer arrived
        self.slots: Slots | None = None  # the pool slot this answer holds

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._complete:  # nothing was asked: an idle connection talking is broken
            self._fail(UpstreamInvalid("bytes after a complete answer"))
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamInvalid("upstream switched protocols"))
        except httptools.HttpParserError as exc:
            if self._extra:
                # The answer asked for is whole; the connection is not to be trusted again.
                self._keep_alive = False
                if self.transport is not None:
                    self.transport.close()
                return
            self._fail(UpstreamInvalid(f"invalid HTTP answer: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost says what it means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._complete:
            return
        if self._until_eof and self._error is None and exc is None:
            self._end()  # an answer without a length ends when the connection does
            return
        detail = f": {exc}" if exc else ""
        early = not self._got_bytes
        self._fail(_Disconnected(f"upstream closed the connection{detail}", early=early))

    # -- llhttp callbacks ------------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: informational, the real answer follows
            self._raw_headers, self._reason = [], b""
            return
        head = self._head
        self._head = None
        ctype = encoding = None
        length = chunked = False
        named: set[bytes] = set()
        for name, value in self._raw_headers:  # one pass for what the relay and capture need
            low = name.lower()
            if low == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
            elif low == b"content-length":
                length = True
            elif low == b"transfer-encoding":
                chunked = chunked or b"chunked" in value.lower()
            elif low == b"content-type":
                ctype = decode(value) if ctype is None else ctype
            elif low == b"content-encoding":
                encoding = decode(value) if encoding is None else encoding
        response = UpstreamResponse(
            status,
            decode(self._reason),
            self._raw_headers,
            self,
            content_type=ctype or "",
            content_encoding=encoding or "",
            connection_names=frozenset(named - {b""}),
        )
        self._until_eof = not length and not chunked
        if head is not None and not head.done():
            head.set_result(response)
        if self._head_only:  # HEAD: no body follows whatever the headers say
            self._keep_alive = False
            self._end()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer in the same packet: nothing asked for it
            self._extra = True
            raise _ExtraAnswer

    def on_message_complete(self) -> None:
        if self._complete or self._parser.get_status_code() < 200:  # 1xx: the answer follows
            return
        self._keep_alive = self._parser.should_keep_alive()
        self._end()

    # -- used by the pool and the response -------------------------------------------------
    @property
    def body_complete(self) -> bool:
        return self._complete and self._error is None

    def send(
        self, head: bytes, body: bytes, head_only: bool, deadline: float, read_timeout: float
    ) -> None:
        """Write one request; `response()` waits for its answer."""
        assert self.transport is not None
        self._head = self._loop.create_future()
        self._reason, self._raw_headers = b"", []
        self._got_bytes = self._complete = self._keep_alive = self._until_eof = False
        self._head_only = head_only
        self._chunks.clear()
        self._buffered = 0
        self._error = None
        self._deadline, self._read_timeout = deadline, read_timeout
        self.transport.write(head + body if body else head)  # one send() per request

    async def response(self) -> UpstreamResponse:
        """Wait (bounded) for the answer's headers."""
        head = self._head
        assert head is not None
        if not head.done():
            handle = self._loop.call_later(self._wait_s(), self._time_out, head)
            try:
                return await head
            finally:
                handle.cancel()
        return head.result()

    async def read_body(self) -> bytes:
        """Everything buffered so far, waiting (bounded) when nothing is; b"" at the end."""
        while not self._chunks:
            if self._complete:  # whole, even if the connection misbehaved afterwards
                return b""
            if self._error is not None:
                raise self._error
            waiter = self._waiter = self._loop.create_future()
            handle = self._loop.call_later(self._wait_s(), self._time_out, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def finish(self) -> None:
        """The relay is done with the answer: pool the connection if it can be reused."""
        if self._complete and self._keep_alive and self._error is None and not self.closed:
            self._free_slot()
            self._pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Close the connection (any state); frees the pool slot if the answer held one."""
        self._keep_alive = self._until_eof = False  # our close does not end the body
        if self.transport is not None and not self.closed:
            self.transport.close()
        self._pool.forget(self)
        self._free_slot()

    def _free_slot(self) -> None:
        slots, self.slots = self.slots, None
        if slots is not None:
            slots.give()

    def _wait_s(self) -> float:
        return max(0.0, min(self._read_timeout, self._deadline - self._loop.time()))

    def _time_out(self, fut: asyncio.Future[Any]) -> None:
        if not fut.done():
            exc = UpstreamTimeout("upstream did not answer in time")
            self._error = exc
            fut.set_exception(exc)
            self.abort()

    def _end(self) -> None:
        self._complete = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: UpstreamError) -> None:
        if self._error is None:
            self._error = exc
        for fut in (self._head, self._waiter):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        self._head = None
        if self.transport is not None and not self.closed:
            self.transport.close()
