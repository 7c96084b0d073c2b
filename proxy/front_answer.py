"""How the lean front writes an answer on a client connection: HTTP/1.1 framing by hand.

A relayed answer keeps production's status, reason and headers (hop-by-hop ones already
removed) in their order. Framing is ours: production's own `Content-Length` when it sent
one; for an answer that arrived whole, the length of what we hold (head and body leave in
one write); otherwise chunked, each chunk written as soon as it is read so server-sent
events keep their timing. Every answer carries the request's `x-shadow-request-id`, and a
`Date` when production sent none.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol

from proxy.errors import error_body
from proxy.ids import REQUEST_ID_HEADER

# Statuses whose answers never have a body (RFC 9110 §6.4.1).
_NO_BODY = frozenset({204, 304})
_REQUEST_ID = REQUEST_ID_HEADER.encode("ascii")  # lower case, as compared below


class Connection(Protocol):
    """What an answer needs from the connection it is written on."""

    def send(self, data: bytes) -> None:
        """Write bytes; raises ConnectionError once the client is gone."""

    async def drained(self) -> None:
        """Return once the client has read enough that writing may go on."""

    def abort(self) -> None:
        """Close the connection at once."""


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The current `Date` header value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _encode(text: str) -> bytes:
    """Header text back to the bytes it was read from (headers are decoded the same way)."""
    return text.encode("utf-8", "surrogateescape")


def error_bytes(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    request_id: str,
    *,
    close: bool,
) -> bytes:
    """A whole OpenAI-style error answer, head and body."""
    body = error_body(message, type_, code)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{REQUEST_ID_HEADER}: {request_id}\r\n"
    ).encode("ascii")
    close_line = b"Connection: close\r\n" if close else b""
    return head + b"Date: " + http_date() + b"\r\n" + close_line + b"\r\n" + body


class LeanAnswer:
    """One relayed answer on a lean-front connection (see the module docstring)."""

    __slots__ = ("_conn", "_head", "_held", "_keep_alive", "_mode", "_request_id", "status")

    def __init__(self, conn: Connection, request_id: str, keep_alive: bool) -> None:
        self._conn = conn
        self._request_id = request_id
        self._keep_alive = keep_alive
        self.status: int | None = None  # set once the answer has started
        self._head = b""
        self._mode = "raw"  # raw | chunked | held | empty
        self._held: list[bytes] = []

    @property
    def started(self) -> bool:
        """The status line was decided: an error can no longer be answered on this request."""
        return self.status is not None

    async def start(
        self, status: int, reason: str, headers: list[tuple[bytes, bytes]], whole: bool
    ) -> None:
        """Build the head; send it now unless the body it precedes is already here."""
        self.status = status
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, _encode(reason))]
        has_length = has_date = False
        for name, value in headers:  # as production sent them: no decoding, no encoding
            low = name.lower()
            if low == b"content-length":
                has_length = True
            elif low == b"date":
                has_date = True
            elif low == _REQUEST_ID:
                continue  # ours replaces one from production (another proxy behind us)
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"%s: %s\r\n" % (_REQUEST_ID, self._request_id.encode()))
        if not has_date:
            parts.append(b"Date: " + http_date() + b"\r\n")
        if not self._keep_alive:
            parts.append(b"Connection: close\r\n")
        if status < 200 or status in _NO_BODY:
            self._mode = "empty"
        elif has_length:
            self._mode = "raw"
        elif whole:
            self._mode = "held"  # the length is known once the body is
        else:
            self._mode = "chunked"
            parts.append(b"Transfer-Encoding: chunked\r\n")
        self._head = b"".join(parts)
        if self._mode in ("raw", "chunked") and not whole:
            self._conn.send(self._head + b"\r\n")
            self._head = b""

    async def write(self, chunk: bytes) -> None:
        """Send one chunk of the body (or hold it until the whole answer leaves)."""
        mode = self._mode
        if mode == "held":
            self._held.append(chunk)
            return
        if mode == "empty" or not chunk:
            return
        data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if mode == "chunked" else chunk
        if self._head:  # a whole answer with its own length: head and body in one write
            data, self._head = self._head + b"\r\n" + data, b""
        self._conn.send(data)
        await self._conn.drained()

    async def end(self) -> None:
        """Finish the answer: send what was held, or the last chunk."""
        mode = self._mode
        if mode == "held":
            body = b"".join(self._held)
            self._held = []
            self._conn.send(self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        elif self._head:  # nothing was written since start (an empty body)
            tail = b"0\r\n\r\n" if mode == "chunked" else b""
            self._conn.send(self._head + b"\r\n" + tail)
        elif mode == "chunked":
            self._conn.send(b"0\r\n\r\n")
        self._head = b""
        await self._conn.drained()

    def abort(self) -> None:
        """Production failed mid-answer: close the connection so the cut is visible."""
        self._conn.abort()
