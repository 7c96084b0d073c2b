"""Relay one request to production, byte for byte, streaming the answer as it arrives.

The client must not be able to tell the proxy is there: the production status, reason,
headers and body bytes reach it unchanged and unbuffered (each piece is written as soon
as it is read, so server-sent events keep their timing). Only hop-by-hop headers change,
plus the `x-shadow-*` control headers that are meant for the proxy alone. Failures before
the production answer starts become 502/504 error JSON; failures after it started close
the client connection, so a cut-off stream never looks complete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import structlog
from multidict import CIMultiDictProxy

from proxy.config import ProductionSettings
from proxy.errors import (
    ClientStalled,
    ProxyHTTPError,
    describe_exception,
    upstream_timeout,
    upstream_unreachable,
)
from proxy.lake.schema import now_us
from proxy.upstream import UpstreamError, UpstreamPool, UpstreamResponse

log = structlog.get_logger("shadoweval.proxy")

# RFC 9110 §7.6.1 plus the legacy names proxies still meet in practice.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Also recomputed by the HTTP client for the upstream request.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect"}
_HOP_BY_HOP_RAW = frozenset(name.encode("ascii") for name in HOP_BY_HOP)
_REQUEST_DROP_RAW = frozenset(name.encode("ascii") for name in _REQUEST_DROP)
SHADOW_PREFIX = "x-shadow-"
_SHADOW_PREFIX_RAW = SHADOW_PREFIX.encode("ascii")

OnSent = Callable[[], None]
OnHeaders = Callable[[UpstreamResponse], None]
OnChunk = Callable[[bytes], None]


@dataclass(slots=True)
class Incoming:
    """One client request as the relay sees it, whichever HTTP server received it."""

    method: str
    path: str  # decoded, for routing and recording
    raw_path: str  # as the client sent it (path and query), for production
    headers: CIMultiDictProxy[str]
    request_id: str
    raw_headers: Sequence[tuple[bytes, bytes]]  # the same headers as sent, for production


class ClientAnswer(Protocol):
    """Where a relayed answer goes: the client's connection, through either HTTP server.

    Each awaitable raises ConnectionError once the client is gone.
    """

    async def start(
        self, status: int, reason: str, headers: list[tuple[bytes, bytes]], whole: bool
    ) -> None:
        """Send the status line and headers, given as the bytes production sent (`whole`:
        the body is already complete)."""

    async def write(self, chunk: bytes) -> None:
        """Send one body chunk, waiting while the client reads slower than we write."""

    async def end(self) -> None:
        """The body ended normally."""

    def abort(self) -> None:
        """Production failed mid-answer: close the connection without a clean end."""


@dataclass(slots=True)
class Exchange:
    """What happened on one production call: when, how long, and how it ended."""

    started_at: int  # microseconds since the epoch (proxy.lake.schema.now_us)
    t0: float
    status: int | None = None
    upstream_ms: float | None = None  # until the response headers
    ttft_ms: float | None = None  # until the first body chunk
    latency_ms: float | None = None  # until the end of the body (or the failure)
    error: str | None = None  # connect | timeout | invalid | dropped
    error_detail: str | None = None

    @classmethod
    def begin(cls) -> Exchange:
        """A new exchange; `relay` resets the clock when the request is sent."""
        return cls(now_us(), time.perf_counter())

    def elapsed_ms(self) -> float:
        """Milliseconds since the request was sent."""
        return (time.perf_counter() - self.t0) * 1000.0

    def fail(self, kind: str, detail: str) -> None:
        """Note the first failure of the exchange and when it happened."""
        if self.error is None:
            self.error, self.error_detail = kind, detail
        self.latency_ms = self.elapsed_ms()

    def client_status(self, answered: int) -> int:
        """The status counted for the client (metrics, access line): 499, as nginx counts
        it, when the client did not take its answer to the end, else the one it was sent."""
        return 499 if self.error == "dropped" else answered


def _dropping(drop: frozenset[bytes], raw: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """`drop` plus the header names the sender declared hop-by-hop in `Connection`."""
    for name, value in raw:
        if name.lower() == b"connection":
            drop = drop | {t.strip().lower() for t in value.split(b",") if t.strip()}
    return drop


def response_headers(upstream: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    """Production's response headers minus hop-by-hop ones, as the bytes they arrived as;
    repeated headers kept in order. (Not decoded: the lean front writes them as they are.)"""
    named = upstream.connection_names  # found while the head was parsed
    drop = _HOP_BY_HOP_RAW | named if named else _HOP_BY_HOP_RAW
    return [(name, value) for name, value in upstream.raw_headers if name.lower() not in drop]


def upstream_pool(production: ProductionSettings) -> UpstreamPool:
    """The one keep-alive connection pool to production for this process (call in the loop).

    Bytes pass through as sent (a compressed answer stays compressed), no cookie is ever
    kept, no redirect followed, and only the client's own headers are sent.
    """
    return UpstreamPool(
        production.base_url,
        limit=production.pool_size,
        connect_timeout=production.connect_timeout_s,
        read_timeout=production.read_timeout_s,
        total_timeout=production.total_timeout_s,
    )


def client_gone(exc: ConnectionError) -> str:
    """The `error_detail` of an answer the client did not take to its end."""
    return "client stopped reading" if isinstance(exc, ClientStalled) else "client disconnected"


class Forwarder:
    """Sends requests to production over one pool and relays the answers."""

    def __init__(self, pool: UpstreamPool, production: ProductionSettings) -> None:
        """Precompute what every request needs: the base path and Authorization."""
        self._pool = pool
        self._base_path = urlsplit(production.base_url).path.rstrip("/")
        self._auth = f"Bearer {production.api_key}".encode() if production.api_key else None

    def upstream_target(self, raw_path: str) -> str:
        """`/v1/x?q` → `<base path>/x?q`, keeping the client's encoding of path and query."""
        return self._base_path + raw_path[3:]

    def request_headers(self, incoming: Incoming, *, identity: bool) -> list[tuple[bytes, bytes]]:
        """The client's headers for production, as the client sent them: hop-by-hop and
        proxy controls removed, Authorization replaced when the proxy has its own key."""
        raw = incoming.raw_headers
        connection = "Connection" in incoming.headers  # a lookup, not a pass over the headers
        drop = _dropping(_REQUEST_DROP_RAW, raw) if connection else _REQUEST_DROP_RAW
        out: list[tuple[bytes, bytes]] = []
        for name, value in raw:
            low = name.lower()
            if low in drop or low.startswith(_SHADOW_PREFIX_RAW):
                continue
            if (low == b"authorization" and self._auth) or (identity and low == b"accept-encoding"):
                continue
            out.append((name, value))
        if self._auth:
            out.append((b"Authorization", self._auth))
        if identity:
            # Recorded routes ask for an uncompressed answer so it can be read as it streams.
            out.append((b"Accept-Encoding", b"identity"))
        return out

    async def relay(
        self,
        incoming: Incoming,
        body: bytes,
        exchange: Exchange,
        answer: ClientAnswer,
        *,
        identity: bool = False,
        on_sent: OnSent | None = None,
        on_headers: OnHeaders | None = None,
        on_chunk: OnChunk | None = None,
    ) -> None:
        """Forward `incoming` (whose body was already read) and stream production's answer.

        `on_sent` runs once, right after the request was written to production (work put
        there is done while production works, not before it is asked); `on_headers` once
        production's response headers arrived; `on_chunk` sees every body chunk right after
        it was written to the client. Each must be quick and must not raise. Raises
        ProxyHTTPError (502/504) when production gives no answer.
        """
        target = self.upstream_target(incoming.raw_path)
        headers = self.request_headers(incoming, identity=identity)
        exchange.started_at, exchange.t0 = now_us(), time.perf_counter()
        try:
            upstream = await self._pool.request(
                incoming.method, target, headers, body, on_sent=on_sent
            )
        except asyncio.CancelledError:
            exchange.fail("dropped", "client disconnected")
            raise
        except TimeoutError as exc:
            exchange.fail("timeout", describe_exception(exc))
            raise upstream_timeout(exchange.error_detail or "timeout") from None
        except UpstreamError as exc:
            if exc.kind == "connect":
                exchange.fail("connect", describe_exception(exc))
                raise upstream_unreachable(exchange.error_detail or "connect") from None
            exchange.fail("invalid", describe_exception(exc))
            raise ProxyHTTPError(
                502,
                f"invalid upstream response: {exchange.error_detail}",
                "upstream_error",
                "bad_gateway",
            ) from None
        clean = False
        try:
            exchange.status = upstream.status
            exchange.upstream_ms = exchange.elapsed_ms()
            if on_headers is not None:
                on_headers(upstream)
            # An answer that arrived whole goes out in one write, headers and body together;
            # one still arriving gets its headers at once (a stream's first event waits).
            try:
                await answer.start(
                    upstream.status,
                    upstream.reason,
                    response_headers(upstream),
                    upstream.body_complete,
                )
            except ConnectionError as exc:
                exchange.fail("dropped", client_gone(exc))
                return
            clean = await self._pump(upstream, answer, exchange, on_chunk)
        except BaseException:
            if exchange.error is None:
                exchange.fail("dropped", "client disconnected")
            raise
        finally:
            if clean:
                upstream.release()
            else:
                # Unread bytes are left: the connection cannot go back to the pool.
                upstream.close()

    async def _pump(
        self,
        upstream: UpstreamResponse,
        answer: ClientAnswer,
        exchange: Exchange,
        on_chunk: OnChunk | None,
    ) -> bool:
        """Copy the body chunk by chunk as it arrives; True when it ended normally."""
        while True:
            try:
                chunk = await upstream.read()
            except UpstreamError as exc:
                # Production failed mid-answer: the client must not see a clean end.
                exchange.fail(exc.kind, describe_exception(exc))
                answer.abort()
                return False
            if not chunk:
                break
            if exchange.ttft_ms is None:
                exchange.ttft_ms = exchange.elapsed_ms()
            try:
                await answer.write(chunk)
            except ConnectionError as exc:
                exchange.fail("dropped", client_gone(exc))
                return False
            if on_chunk is not None:
                on_chunk(chunk)
        exchange.latency_ms = exchange.elapsed_ms()
        try:
            await answer.end()
        except ConnectionError as exc:
            exchange.fail("dropped", client_gone(exc))
        return True
