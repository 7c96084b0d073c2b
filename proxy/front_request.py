"""One request on the lean front, once its body is in hand: what aiohttp's edge middleware
does on the other path (`proxy.edge`), for the front's own connections.

The request gets its id, is counted in flight, runs the shared /v1 path (`proxy.v1`), and
ends with one metric observation and one access line. An error before the answer started
becomes the proxy's error JSON; after, only closing the connection can tell the client. A
request that never ran (its body refused, or cut by shutdown) is still counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog
from multidict import CIMultiDictProxy

from proxy.errors import ProxyHTTPError
from proxy.forward import Exchange, Incoming
from proxy.front_answer import Connection, LeanAnswer, error_bytes
from proxy.lake.schema import now_us
from proxy.log import CURRENT_REQUEST_ID
from proxy.v1 import v1_route_label

if TYPE_CHECKING:
    from proxy.front_site import Front

log = structlog.get_logger("shadoweval.proxy")


def write_error(conn: Connection, err: ProxyHTTPError, rid: str, *, keep: bool) -> None:
    """The proxy's own error JSON; a client already gone needs none."""
    with contextlib.suppress(ConnectionError):
        conn.send(error_bytes(err.status, err.message, err.type, err.code, rid, close=not keep))


def count(
    front: Front,
    method: str,
    path: str,
    status: int,
    seconds: float | None,
    upstream_ms: float | None = None,
) -> None:
    """The request's metric observation and access line (`seconds` None: it never ran)."""
    front.metrics.observe(v1_route_label(method, path), status, seconds or 0.0)
    if front.access_log:
        log.info(
            "access",
            method=method,
            route=path,
            status=status,
            latency_ms=round(seconds * 1000.0, 3) if seconds is not None else None,
            upstream_ms=round(upstream_ms, 3) if upstream_ms is not None else None,
        )


def count_unserved(front: Front, method: str, target: str, rid: str, status: int) -> None:
    """A request answered or dropped before it ran (413, or 499 at shutdown)."""
    token = CURRENT_REQUEST_ID.set(rid)
    try:
        count(front, method, target.partition("?")[0], status, None)
    finally:
        CURRENT_REQUEST_ID.reset(token)


async def serve_request(
    front: Front,
    conn: Connection,
    rid: str,
    method: str,
    target: str,
    headers: CIMultiDictProxy[str],
    raw_headers: list[tuple[bytes, bytes]],
    body: bytes,
    keep: bool,
) -> bool:
    """Relay one request and write its answer; True if the connection may be reused."""
    path = target.partition("?")[0]
    t0 = time.perf_counter()
    received_at = now_us()
    exchange = Exchange(received_at, t0)  # the clock read once; `relay` resets it at the send
    answer = LeanAnswer(conn, rid, keep)
    status = 500
    err: ProxyHTTPError | None = None
    front.metrics.in_flight.inc()
    token = CURRENT_REQUEST_ID.set(rid)
    try:
        incoming = Incoming(method, path, target, headers, rid, raw_headers)
        label = v1_route_label(method, path)
        await front.service.relay(incoming, body, received_at, exchange, answer, label)
        status = exchange.client_status(answer.status or 500)
        return keep
    except ProxyHTTPError as exc:
        status, err = exc.status, exc
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer was complete
        raise
    except Exception:
        log.exception("unhandled error in request handler", path=path)
        err = ProxyHTTPError(500, "internal proxy error", "server_error", "internal_error")
    finally:
        front.metrics.in_flight.dec()
        try:
            count(front, method, path, status, time.perf_counter() - t0, exchange.upstream_ms)
        finally:
            CURRENT_REQUEST_ID.reset(token)
    if answer.started or err is None:
        return False  # half an answer is out: only closing can tell the client
    write_error(conn, err, rid, keep=keep)
    return keep
