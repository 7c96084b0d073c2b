"""The /v1 request path once the body is in hand, shared by both HTTP servers.

For every /v1 route: relay to production. On the four recorded POST routes also, once the
request is on its way to production, parse the JSON body once, ask the sampler whether to
mirror it and record the request; then record production's answer, and hand mirrored
requests to the mirror once production has answered (`proxy.capture`). Which server
received the request (the lean front or aiohttp's) makes no difference here: the request
arrives as an `Incoming`, the answer leaves through a `ClientAnswer`.
"""

from __future__ import annotations

import structlog

from proxy.capture import Capture
from proxy.config import Settings
from proxy.forward import ClientAnswer, Exchange, Forwarder, Incoming
from proxy.metrics import ProxyMetrics
from proxy.mirror import Mirror, RowRecorder
from proxy.sampling import SUPPORTED_ROUTES, Sampler

log = structlog.get_logger("shadoweval.proxy")

# POST routes whose requests and production answers are recorded: the mirrorable ones.
RECORDED_ROUTES = SUPPORTED_ROUTES
MODELS_ROUTE = "/v1/models"
OTHER_V1 = "/v1/{tail}"


def v1_route_label(method: str, path: str) -> str:
    """The metrics label of a /v1 request: the route pattern it matches, so series stay bounded."""
    if method == "POST" and path in RECORDED_ROUTES:
        return path
    if path == MODELS_ROUTE and method in ("GET", "HEAD"):
        return MODELS_ROUTE
    return OTHER_V1


class V1Service:
    """Capture, relay, record and count one /v1 request."""

    def __init__(
        self,
        settings: Settings,
        forwarder: Forwarder,
        recorder: RowRecorder,
        sampler: Sampler,
        mirror: Mirror,
        metrics: ProxyMetrics,
    ) -> None:
        self._settings = settings
        self._forwarder = forwarder
        self._recorder = recorder
        self._sampler = sampler
        self._mirror = mirror
        self._metrics = metrics
        self.body_limit = settings.server.body_limit_bytes

    async def relay(
        self,
        incoming: Incoming,
        body: bytes,
        received_at: int,
        exchange: Exchange,
        answer: ClientAnswer,
        route_label: str,
    ) -> None:
        """Relay one request to production; record it when its route is recorded.

        Raises ProxyHTTPError when production gave no answer (the caller answers with it).
        """
        capture: Capture | None = None
        if incoming.method == "POST" and incoming.path in RECORDED_ROUTES:
            capture = Capture(
                recorder=self._recorder,
                mirror=self._mirror,
                sampler=self._sampler,
                settings=self._settings,
                incoming=incoming,
                body=body,
                received_at=received_at,
            )
        try:
            if capture is None:
                await self._forwarder.relay(incoming, body, exchange, answer)
            else:
                await self._forwarder.relay(
                    incoming,
                    body,
                    exchange,
                    answer,
                    identity=True,
                    on_sent=capture.sent,
                    on_headers=capture.on_headers,
                    on_chunk=capture.on_chunk,
                )
        finally:
            if capture is not None:
                try:
                    capture.finish(exchange)
                except Exception:  # recording must never turn an answer into an error
                    log.exception("production answer not recorded", route=incoming.path)
            if exchange.error is not None:
                self._metrics.upstream_error(exchange.error)
            if exchange.upstream_ms is not None:
                self._metrics.observe_upstream(route_label, exchange.upstream_ms / 1000.0)
