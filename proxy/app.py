"""`create_app(settings)`: the one place the proxy's request path is wired.

A request passes one middleware (request id, error JSON, metrics, access line), then the
proxy handler: read the body within the limit, and hand it to the shared /v1 path
(`proxy.v1`), which records, samples, mirrors and relays. The lean front (`proxy.front`)
serves most /v1 requests itself and hands every other connection to this application, so
admin, health and metrics routes, and any request the front does not take, are served here.
State lives under `web.AppKey`s; the upstream session, recorder and mirror start and stop
through `cleanup_ctx`, in that order, so on shutdown the mirror drains first and the
recorder flushes last.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.admin import setup_admin
from proxy.aiohttp_answer import AiohttpAnswer
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
from proxy.forward import Exchange, Forwarder, Incoming, upstream_pool
from proxy.health import Lifecycle, health_routes
from proxy.lake.recorder import LakeRecorder, Recorder
from proxy.lake.schema import now_us
from proxy.lake.writer_process import ProcessRecorder
from proxy.log import access_lines
from proxy.metrics import ProxyMetrics, metrics_handler
from proxy.mirror import Mirror
from proxy.sampling import Sampler
from proxy.tasks import TaskSet
from proxy.v1 import RECORDED_ROUTES, V1Service
from proxy.worker_metrics import WorkerMetrics, merged_registry

log = structlog.get_logger("shadoweval.proxy")

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", CollectorRegistry)
METRICS = web.AppKey("metrics", ProxyMetrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
FORWARDER = web.AppKey("forwarder", Forwarder)
RECORDER = web.AppKey("recorder", LakeRecorder)
SAMPLER = web.AppKey("sampler", Sampler)
MIRROR = web.AppKey("mirror", Mirror)
SERVICE = web.AppKey("service", V1Service)


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


def _aiohttp_handler(app: web.Application) -> Handler:
    """The handler for /v1 requests that reach aiohttp's server: read, then the shared path."""
    limit = app[SETTINGS].server.body_limit_bytes
    write_timeout_s = app[SETTINGS].server.client_write_timeout_s

    async def handle(request: web.Request) -> web.StreamResponse:
        """Relay one request to production; record it when its route is recorded."""
        received_at = now_us()
        body = await read_body(request, limit)
        exchange = Exchange.begin()
        request[EXCHANGE] = exchange
        incoming = Incoming(
            request.method,
            request.path,
            request.raw_path,
            request.headers,
            request[REQUEST_ID],
            request.raw_headers,
        )
        answer = AiohttpAnswer(request, write_timeout_s)
        await app[SERVICE].relay(
            incoming, body, received_at, exchange, answer, route_label(request)
        )
        assert answer.response is not None  # relay either started the answer or raised
        return answer.response

    return handle


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The process's one keep-alive pool to production, for the app's lifetime."""
    settings = app[SETTINGS]
    pool = upstream_pool(settings.production)
    app[FORWARDER] = Forwarder(pool, settings.production)
    app[SERVICE] = V1Service(
        settings, app[FORWARDER], app[RECORDER], app[SAMPLER], app[MIRROR], app[METRICS]
    )
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


def _shared_metrics_ctx(shared: WorkerMetrics) -> Callable[[web.Application], AsyncIterator[None]]:
    """Share this worker's metrics with the others while the app runs (`--workers N`)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = TaskSet("metrics")
        tasks.spawn(shared.run(), "share")
        yield
        await tasks.cancel_all()  # writes a last snapshot

    return ctx


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    shared_metrics: tuple[Path, int] | None = None,
) -> web.Application:
    """Build the proxy application for `settings`; nothing starts until the app does.

    `shared_metrics` (a directory and this worker's index) is given to each of the workers of
    `--workers N`: /metrics then serves every worker's figures summed (proxy.worker_metrics).
    """
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    metrics = ProxyMetrics(registry)
    lifecycle = Lifecycle()
    app = web.Application(
        middlewares=[make_edge_middleware(metrics, access_lines(settings))],
        # The proxy route enforces body_limit_bytes itself; admin routes have their own limit.
        client_max_size=max(settings.server.body_limit_bytes, settings.admin.labels_max_bytes),
    )
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[METRICS] = metrics
    app[LIFECYCLE] = lifecycle
    recorder: LakeRecorder
    if settings.storage.writer_process:
        recorder = ProcessRecorder(settings.storage, registry=registry, logging=settings.logging)
    else:
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

    handler = _aiohttp_handler(app)
    for route in sorted(RECORDED_ROUTES):
        app.router.add_post(route, handler)
    app.router.add_get("/v1/models", handler)
    app.router.add_route("*", "/v1/{tail:.*}", handler)
    app.router.add_routes(health_routes(lifecycle))
    if shared_metrics is None:
        app.router.add_get("/metrics", metrics_handler(registry))
    else:
        shared = WorkerMetrics(shared_metrics[0], shared_metrics[1], registry)
        app.cleanup_ctx.insert(0, _shared_metrics_ctx(shared))  # stops last: final figures
        app.router.add_get("/metrics", metrics_handler(merged_registry(shared)))
    return app
