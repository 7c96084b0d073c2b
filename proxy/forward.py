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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import ProductionSettings
from proxy.errors import (
    ProxyHTTPError,
    describe_exception,
    upstream_timeout,
    upstream_unreachable,
)

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
SHADOW_PREFIX = "x-shadow-"

OnHeaders = Callable[[aiohttp.ClientResponse], None]
OnChunk = Callable[[bytes], None]


@dataclass(slots=True)
class Exchange:
    """What happened on one production call: when, how long, and how it ended."""

    started_at: datetime
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
        return cls(datetime.now(UTC), time.perf_counter())

    def elapsed_ms(self) -> float:
        """Milliseconds since the request was sent."""
        return (time.perf_counter() - self.t0) * 1000.0

    def fail(self, kind: str, detail: str) -> None:
        """Note the first failure of the exchange and when it happened."""
        if self.error is None:
            self.error, self.error_detail = kind, detail
        self.latency_ms = self.elapsed_ms()


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names the sender declared hop-by-hop in its `Connection` header."""
    values = headers.getall("Connection", ())
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Production's response headers minus hop-by-hop ones; repeated headers kept."""
    drop = HOP_BY_HOP | _connection_tokens(upstream) if "Connection" in upstream else HOP_BY_HOP
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def upstream_session(production: ProductionSettings) -> aiohttp.ClientSession:
    """The one keep-alive connection pool to production for this process."""
    connector = aiohttp.TCPConnector(limit=production.pool_size, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(
        total=production.total_timeout_s,
        sock_connect=production.connect_timeout_s,
        sock_read=production.read_timeout_s,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        # Bytes pass through as sent (a compressed body stays compressed for the client).
        auto_decompress=False,
        # Cookies one client receives must never be sent on another client's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Send only what the client sent: no invented User-Agent, Accept or Content-Type.
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        trust_env=False,
    )


class Forwarder:
    """Sends requests to production over one session and relays the answers."""

    def __init__(self, session: aiohttp.ClientSession, production: ProductionSettings) -> None:
        """Precompute what every request needs: base URL and Authorization."""
        self._session = session
        self._base = production.base_url
        self._auth = f"Bearer {production.api_key}" if production.api_key else None

    def upstream_url(self, raw_path: str) -> URL:
        """`/v1/x?q` → `<base_url>/x?q`, keeping the client's encoding of path and query."""
        return URL(self._base + raw_path[3:], encoded=True)

    def request_headers(
        self, incoming: CIMultiDictProxy[str], *, identity: bool
    ) -> CIMultiDict[str]:
        """The client's headers for production: hop-by-hop and proxy controls removed,
        Authorization replaced when the proxy has its own production key."""
        drop = (
            _REQUEST_DROP | _connection_tokens(incoming)
            if "Connection" in incoming
            else _REQUEST_DROP
        )
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in incoming.items():
            low = name.lower()
            if low in drop or low.startswith(SHADOW_PREFIX):
                continue
            if (low == "authorization" and self._auth) or (identity and low == "accept-encoding"):
                continue
            out.add(name, value)
        if self._auth:
            out["Authorization"] = self._auth
        if identity:
            # Recorded routes ask for an uncompressed answer so it can be read as it streams.
            out["Accept-Encoding"] = "identity"
        return out

    async def relay(
        self,
        request: web.Request,
        body: bytes,
        exchange: Exchange,
        *,
        identity: bool = False,
        on_headers: OnHeaders | None = None,
        on_chunk: OnChunk | None = None,
    ) -> web.StreamResponse:
        """Forward `request` (whose body was already read) and stream production's answer.

        `on_headers` runs once production's response headers arrived; `on_chunk` sees every
        body chunk right after it was written to the client. Both must be quick and must
        not raise. Raises ProxyHTTPError (502/504) when production gives no answer.
        """
        url = self.upstream_url(request.raw_path)
        headers = self.request_headers(request.headers, identity=identity)
        exchange.started_at, exchange.t0 = datetime.now(UTC), time.perf_counter()
        try:
            upstream = await self._session.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            )
        except asyncio.CancelledError:
            exchange.fail("dropped", "client disconnected")
            raise
        except TimeoutError as exc:
            exchange.fail("timeout", describe_exception(exc))
            raise upstream_timeout(exchange.error_detail or "timeout") from None
        except aiohttp.ClientConnectionError as exc:
            exchange.fail("connect", describe_exception(exc))
            raise upstream_unreachable(exchange.error_detail or "connect") from None
        except aiohttp.ClientError as exc:
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
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=response_headers(upstream.headers),
            )
            try:
                await response.prepare(request)
            except ConnectionError:
                exchange.fail("dropped", "client disconnected")
                return response
            clean = await self._pump(request, upstream, response, exchange, on_chunk)
            return response
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
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        exchange: Exchange,
        on_chunk: OnChunk | None,
    ) -> bool:
        """Copy the body chunk by chunk as it arrives; True when it ended normally."""
        content = upstream.content
        while True:
            try:
                chunk = await content.readany()
            except TimeoutError as exc:
                return self._cut(request, exchange, "timeout", exc)
            except aiohttp.ClientError as exc:
                return self._cut(request, exchange, "connect", exc)
            if not chunk:
                break
            if exchange.ttft_ms is None:
                exchange.ttft_ms = exchange.elapsed_ms()
            try:
                await response.write(chunk)
            except ConnectionError:
                exchange.fail("dropped", "client disconnected")
                return False
            if on_chunk is not None:
                on_chunk(chunk)
        exchange.latency_ms = exchange.elapsed_ms()
        try:
            await response.write_eof()
        except ConnectionError:
            exchange.fail("dropped", "client disconnected")
        return True

    @staticmethod
    def _cut(request: web.Request, exchange: Exchange, kind: str, exc: BaseException) -> bool:
        """Production failed mid-answer: close the client connection without a clean end."""
        exchange.fail(kind, describe_exception(exc))
        if request.transport is not None:
            request.transport.close()
        return False
