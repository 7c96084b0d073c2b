"""The proxy's edge: what every request gets, whatever its route.

One middleware gives each request its id (the client's own `x-shadow-request-id` when it
sent an acceptable one), turns every error into OpenAI-style JSON, counts the request in the
metrics and writes the one access line (id, route, status, latency, time to production's
headers). A response-prepare hook puts the id on every response, streams included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from proxy.errors import ProxyHTTPError, error_response, not_found
from proxy.forward import Exchange
from proxy.ids import REQUEST_ID_HEADER, request_id_for
from proxy.log import CURRENT_REQUEST_ID
from proxy.metrics import ProxyMetrics

log = structlog.get_logger("shadoweval.proxy")

REQUEST_ID = web.RequestKey("request_id", str)
EXCHANGE = web.RequestKey("exchange", Exchange)

# Probes and scrapes are logged at debug level, so they do not drown the access log.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_label(request: web.Request) -> str:
    """The metrics label of a request: its route pattern, so series stay bounded."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _error_for(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx/5xx (unknown route, wrong method, oversized body) as error JSON."""
    if exc.status == 404:
        err = not_found(request.path)
    else:
        type_ = "invalid_request_error" if exc.status < 500 else "server_error"
        err = ProxyHTTPError(exc.status, exc.reason, type_, exc.reason.lower().replace(" ", "_"))
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    return error_response(err.status, err.message, err.type, err.code, headers=headers)


def make_edge_middleware(
    metrics: ProxyMetrics, access_log: bool
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Request id, OpenAI-style error JSON, metrics and the access line: for every request."""

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run one request with its id bound to every log line; shape errors; count it."""
        rid = request_id_for(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID] = rid
        t0 = time.perf_counter()
        status = 500
        metrics.in_flight.inc()
        token = CURRENT_REQUEST_ID.set(rid)
        try:
            response = await handler(request)
            exchange = request.get(EXCHANGE)
            status = (
                response.status if exchange is None else exchange.client_status(response.status)
            )
            return response
        except ProxyHTTPError as exc:
            status = exc.status
            return error_response(exc.status, exc.message, exc.type, exc.code)
        except web.HTTPException as exc:
            if exc.status < 400:
                status = exc.status
                raise
            error = _error_for(request, exc)
            status = error.status
            return error
        except asyncio.CancelledError:
            status = 499  # the client went away before the answer was complete
            raise
        except Exception:
            log.exception("unhandled error in request handler", path=request.path)
            return error_response(500, "internal proxy error", "server_error", "internal_error")
        finally:
            metrics.in_flight.dec()
            seconds = time.perf_counter() - t0
            metrics.observe(route_label(request), status, seconds)
            try:
                if access_log:
                    exchange = request.get(EXCHANGE)
                    log_fn = log.debug if request.path in _QUIET_PATHS else log.info
                    log_fn(
                        "access",
                        method=request.method,
                        route=request.path,
                        status=status,
                        latency_ms=round(seconds * 1000.0, 3),
                        upstream_ms=round(exchange.upstream_ms, 3)
                        if exchange is not None and exchange.upstream_ms is not None
                        else None,
                    )
            finally:
                # Unbound after the access line, which carries the id too.
                CURRENT_REQUEST_ID.reset(token)

    return edge


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, even an error or a stream, carries the request's id."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[REQUEST_ID_HEADER] = rid
