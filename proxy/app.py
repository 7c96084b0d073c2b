"""`create_app(settings)`: the one place the proxy's request path is wired.

A request passes one middleware (request id, error JSON, metrics, access line), then the
proxy handler: read the body within the limit, and relay it to production. On the four
recorded POST routes the handler also parses the JSON body once, asks the sampler whether
to mirror it, records the request and production's answer, and hands mirrored requests to
the mirror once production has answered. State lives under `web.AppKey`s; the upstream
session, recorder and mirror start and stop through `cleanup_ctx`, in that order, so on
shutdown the mirror drains first and the recorder flushes last.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.admin import setup_admin
from proxy.capture import Capture, request_row
from proxy.config import Settings
from proxy.edge import (
    EXCHANGE,
    REQUEST_ID,
    Handler,
    add_request_id,
    make_edge_middleware,
    route_label,
)
from proxy.errors import body_too_large
from proxy.forward import Exchange, Forwarder, upstream_pool
from proxy.health import Lifecycle, health_routes
from proxy.lake.recorder import Recorder
from proxy.metrics import ProxyMetrics, metrics_handler
from proxy.mirror import Mirror
from proxy.sampling import SUPPORTED_ROUTES, Sampler, SamplingDecision

log = structlog.get_logger("shadoweval.proxy")

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", CollectorRegistry)
METRICS = web.AppKey("metrics", ProxyMetrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
FORWARDER = web.AppKey("forwarder", Forwarder)
RECORDER = web.AppKey("recorder", Recorder)
SAMPLER = web.AppKey("sampler", Sampler)
MIRROR = web.AppKey("mirror", Mirror)

# POST routes whose requests and production answers are recorded: the mirrorable ones.
RECORDED_ROUTES = SUPPORTED_ROUTES


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, or a 413 as soon as it is known to exceed `limit`."""
    length = request.content_length
    if length is not None and length > limit:
        raise body_too_large(limit)
    if not request.body_exists:
        return b""
    body = await request.read()
    if len(body) > limit:
        raise body_too_large(limit)
    return body


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, parsed once; None for anything else (still forwarded)."""
    if not body:
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _not_sampled(reason: str) -> SamplingDecision:
    """The decision used when the sampler itself failed: record, never mirror."""
    return SamplingDecision(
        mirrored=False, sample_rate=0.0, tags=[], session_id=None, reason=reason
    )


def _begin_capture(
    app: web.Application, request: web.Request, body: bytes, received_at: datetime
) -> Capture:
    """Decide about mirroring, record the `requests` row, and watch production's answer."""
    settings = app[SETTINGS]
    route = request.path
    parsed = parse_json_object(body)
    try:
        decision = app[SAMPLER].decide(route, request.headers, parsed)
    except Exception:
        log.exception("sampling failed; request not mirrored", route=route)
        decision = _not_sampled("sampler_error")
    omit = (
        not settings.storage.store_content
        or request.headers.get(settings.storage.omit_header, "").strip().lower() == "content"
    )
    rid = request[REQUEST_ID]
    app[RECORDER].record(
        "requests",
        request_row(
            request_id=rid,
            received_at=received_at,
            route=route,
            method=request.method,
            raw_body=body,
            body=parsed,
            decision=decision,
            omit=omit,
        ),
    )
    return Capture(
        recorder=app[RECORDER],
        mirror=app[MIRROR],
        production=settings.production,
        request_id=rid,
        route=route,
        body=parsed,
        stream=parsed is not None and parsed.get("stream") is True,
        decision=decision,
        omit=omit,
    )


def _proxy_handler(app: web.Application) -> Handler:
    """The handler for every /v1 route: read, maybe capture, relay."""
    settings = app[SETTINGS]
    limit = settings.server.body_limit_bytes
    metrics = app[METRICS]

    async def handle(request: web.Request) -> web.StreamResponse:
        """Relay one request to production; record it when its route is recorded."""
        received_at = datetime.now(UTC)
        body = await read_body(request, limit)
        exchange = Exchange.begin()
        request[EXCHANGE] = exchange
        forwarder = app[FORWARDER]
        capture: Capture | None = None
        if request.method == "POST" and request.path in RECORDED_ROUTES:
            capture = _begin_capture(app, request, body, received_at)
        try:
            if capture is None:
                return await forwarder.relay(request, body, exchange)
            return await forwarder.relay(
                request,
                body,
                exchange,
                identity=True,
                on_headers=capture.on_headers,
                on_chunk=capture.on_chunk,
            )
        finally:
            if capture is not None:
                try:
                    capture.finish(exchange)
                except Exception:  # recording must never turn an answer into an error
                    log.exception("production answer not recorded", route=request.path)
            if exchange.error is not None:
                metrics.upstream_error(exchange.error)
            if exchange.upstream_ms is not None:
                metrics.observe_upstream(route_label(request), exchange.upstream_ms / 1000.0)

    return handle


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The process's one keep-alive pool to production, for the app's lifetime."""
    pool = upstream_pool(app[SETTINGS].production)
    app[FORWARDER] = Forwarder(pool, app[SETTINGS].production)
    yield
    await pool.close()


async def _recorder_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the recorder's flusher; flush everything at shutdown."""
    recorder = app[RECORDER]
    await recorder.start()
    yield
    # Last to stop: everything recorded before, mirror rows included, is flushed.
    await recorder.close()


async def _mirror_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the candidates' workers; drain or count them at shutdown."""
    mirror = app[MIRROR]
    await mirror.start()
    yield
    # Shadow calls get what is left of the shutdown grace period, then are counted as dropped.
    grace = app[LIFECYCLE].remaining_s(app[SETTINGS].server.shutdown_grace_s)
    await mirror.close(grace)


async def _lifecycle_ctx(app: web.Application) -> AsyncIterator[None]:
    """Ready once every resource above has started (runs last, stops first)."""
    app[LIFECYCLE].started = True
    yield
    app[LIFECYCLE].begin_drain(0.0)


async def _on_shutdown(app: web.Application) -> None:
    """Stop reporting ready as soon as shutdown starts (also when not run by serve)."""
    app[LIFECYCLE].begin_drain(app[SETTINGS].server.shutdown_grace_s)


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> web.Application:
    """Build the proxy application for `settings`; nothing starts until the app does."""
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    metrics = ProxyMetrics(registry)
    lifecycle = Lifecycle()
    app = web.Application(
        middlewares=[make_edge_middleware(metrics, settings.server.access_log)],
        # The proxy route enforces body_limit_bytes itself; admin routes have their own limit.
        client_max_size=max(settings.server.body_limit_bytes, settings.admin.labels_max_bytes),
    )
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[METRICS] = metrics
    app[LIFECYCLE] = lifecycle
    recorder = Recorder(settings.storage, registry=registry)
    app[RECORDER] = recorder
    app[SAMPLER] = Sampler(
        settings.sampling, has_candidates=any(c.enabled for c in settings.candidates)
    )
    app[MIRROR] = Mirror(settings, recorder, registry=registry)
    app.on_response_prepare.append(add_request_id)
    app.on_shutdown.append(_on_shutdown)
    # Started in this order, stopped in reverse: mirror drains, recorder flushes, pool closes.
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_recorder_ctx)
    app.cleanup_ctx.append(_mirror_ctx)
    app.cleanup_ctx.append(_lifecycle_ctx)
    setup_admin(app, settings, recorder)

    handler = _proxy_handler(app)
    for route in sorted(RECORDED_ROUTES):
        app.router.add_post(route, handler)
    app.router.add_get("/v1/models", handler)
    app.router.add_route("*", "/v1/{tail:.*}", handler)
    app.router.add_routes(health_routes(lifecycle))
    app.router.add_get("/metrics", metrics_handler(registry))
    return app
