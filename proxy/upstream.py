"""A lean HTTP/1.1 keep-alive client for the production relay: the live path's hottest part.

The relay needs little of a general HTTP client: one origin, a request whose body is
already in memory, the answer's status, headers and body bytes as they arrive (no
decompression, no cookies, no redirects) and bounded waits. aiohttp's client does all
that and much more, at a cost: a bare aiohttp relay on one core answers 1,748 req/s with
aiohttp's client and 3,780 with this one (docs/benchmarks.md, `aiofloor` against `floor`).
This client writes the request head itself and parses the answer with llhttp (through
`httptools`); the connection itself is `proxy.upstream_conn.Connection`.

Semantics the relay relies on:
- `request()` returns once the response headers arrived; the body is read with
  `UpstreamResponse.read()`, which returns whatever arrived since the last call (chunked
  framing removed, content-encoding kept) and b"" at the end. Reading is flow-controlled:
  past `HIGH_WATER` unread bytes the socket stops being read.
- Waits are bounded: connecting by `connect_timeout`, every wait for bytes by
  `read_timeout`, the wait for a free pool slot and the whole exchange by `total_timeout`;
  each raises `UpstreamTimeout`.
- Headers are bytes both ways: the caller's go out as given (a line break in any of them
  raises ValueError, nothing is sent), the answer's come back as `raw_headers`.
- Failures are `UpstreamError`s with a `kind` of connect | timeout | invalid.
- A connection returns to the pool only after a complete answer the server did not ask
  to close; anything else closes it. A request on a reused connection that the server
  closed before sending a single byte back (the keep-alive race) is sent once more on a
  fresh connection, as browsers and urllib3 do.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from proxy.upstream_conn import (
    HIGH_WATER,
    Connection,
    UpstreamError,
    UpstreamInvalid,
    UpstreamTimeout,
    _Disconnected,
)
from proxy.upstream_response import UpstreamResponse

__all__ = [
    "HIGH_WATER",
    "UpstreamError",
    "UpstreamInvalid",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeout",
]

_IDLE_S = 15.0  # a pooled connection unused this long is closed (checked every _IDLE_S / 4)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _line_break_in(headers: Sequence[tuple[bytes, bytes]]) -> ValueError:
    """The error for a head that holds a line break where none may be."""
    for name, value in headers:
        if any(c in name or c in value for c in (b"\r", b"\n")):
            return ValueError(f"header {name!r} contains a line break")
    return ValueError("the request line contains a line break")


class Slots:
    """At most `limit` holders; the rest wait in arrival order. asyncio.Semaphore's contract,
    cheaper where the relay uses it on every request: its `locked()` walks its waiters in
    Python on every call, and taking a free slot here needs no coroutine."""

    __slots__ = ("_free", "_loop", "_waiters")

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self._free = limit
        self._loop = loop
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        """Take a slot if one is free and nobody is waiting for one."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting behind earlier waiters; a cancelled wait holds none."""
        if self.take_now():
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot as the wait was cancelled: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Give a slot back: to the longest waiter, else to the free ones."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class UpstreamPool:
    """Keep-alive connections to one origin (`http://` or `https://`), at most `limit` busy."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        self._host_line = f" HTTP/1.1\r\nHost: {self.host_header}\r\n".encode()
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl_context or ssl.create_default_context()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._total_timeout = total_timeout
        self._limit = limit
        self.loop = asyncio.get_running_loop()
        self._slots = Slots(limit, self.loop)
        self._idle: list[Connection] = []  # the most recently used last
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._all: set[Connection] = set()
        self._closing = False

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> UpstreamResponse:
        """Send one request; return once the answer's headers arrived.

        `target` is the path and query as sent; `headers` (names and values as bytes) must
        not hold Host or Content-Length (set here); a line break in any of them raises
        ValueError. `on_sent` runs once, right after the request was first written (should it
        raise, the connection is closed and the error passes on). The caller must
        `release()` or `close()` the answer.
        """
        parts = [
            method.encode("ascii"),
            b" ",
            target.encode("utf-8", "surrogateescape"),
            self._host_line,
        ]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        lines = len(headers) + 3  # the request line, Host and the blank line
        if body or method in _BODY_METHODS:
            parts.append(b"Content-Length: %d\r\n" % len(body))
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # Every line ends in CRLF and nothing else breaks a line: two scans in C, where a
        # check of each header in Python cost more than the rest of the head.
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise _line_break_in(headers)
        deadline = self.loop.time() + self._total_timeout
        if not self._slots.take_now():
            try:
                async with asyncio.timeout(self._total_timeout):
                    await self._slots.take()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"all {self._limit} connections to {self.host}:{self.port} stayed busy"
                ) from None
        try:
            for attempt in range(2):
                conn = await self._connection(deadline, reuse=attempt == 0)
                conn.send(head, body, method == "HEAD", deadline, self._read_timeout)
                try:
                    if on_sent is not None:
                        sent, on_sent = on_sent, None  # once, even if the send is retried
                        sent()
                    response = await conn.response()
                except _Disconnected as exc:
                    if exc.early and conn.reused:
                        continue  # the server closed an idle connection as we sent on it
                    raise
                except BaseException:  # cancelled, or on_sent broke its promise
                    conn.abort()
                    raise
                conn.slots = self._slots  # released when the relay is done with the answer
                return response
            raise UpstreamError("upstream closed two connections in a row")
        except BaseException:
            self._slots.give()
            raise

    async def _connection(self, deadline: float, *, reuse: bool) -> Connection:
        while reuse and self._idle:
            conn = self._idle.pop()
            if self.loop.time() - conn.idle_since >= _IDLE_S:  # stale, the sweep not yet run
                conn.abort()
                continue
            if not conn.closed:
                conn.reused = True
                return conn
        if self._closing:
            raise UpstreamError("the upstream pool is closed")
        timeout = max(0.0, min(self._connect_timeout, deadline - self.loop.time()))
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._all.add(conn)
        return conn

    def put_back(self, conn: Connection) -> None:
        if self._closing:
            conn.abort()
            return
        # A time stamp, not a timer per request: one sweep closes the stale ones.
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(_IDLE_S / 4, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for `_IDLE_S` or more; look again while any stay idle."""
        self._sweep_handle = None
        stale_before = self.loop.time() - _IDLE_S
        for conn in [conn for conn in self._idle if conn.idle_since <= stale_before]:
            conn.abort()  # and forget(): out of the idle list
        if self._idle and not self._closing:
            self._sweep_handle = self.loop.call_later(_IDLE_S / 4, self._sweep)

    def forget(self, conn: Connection) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def close(self) -> None:
        """Close every connection, idle or busy."""
        self._closing = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing
