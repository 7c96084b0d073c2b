"""The /v1 request path once the body is in hand, shared by both HTTP servers.

For every /v1 route: relay to production. On the four recorded POST routes also parse the
JSON body once, ask the sampler whether to mirror it, record the request and production's
answer, and hand mirrored requests to the mirror once production has answered. Which server
received the request (the lean front or aiohttp's) makes no difference here: the request
arrives as an `Incoming`, the answer leaves through a `ClientAnswer`.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog

from proxy.capture import Capture, request_row
from proxy.config import Settings
from proxy.forward import ClientAnswer, Exchange, Forwarder, Incoming
from proxy.metrics import ProxyMetrics
from proxy.mirror import Mirror, RowRecorder
from proxy.sampling import SUPPORTED_ROUTES, Sampler, SamplingDecision

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

    def _begin_capture(self, incoming: Incoming, body: bytes, received_at: int) -> Capture:
        """Decide about mirroring, record the `requests` row, and watch production's answer."""
        storage = self._settings.storage
        route = incoming.path
        parsed = parse_json_object(body)
        try:
            decision = self._sampler.decide(route, incoming.headers, parsed)
        except Exception:
            log.exception("sampling failed; request not mirrored", route=route)
            decision = _not_sampled("sampler_error")
        omit = (
            not storage.store_content
            or incoming.headers.get(storage.omit_header, "").strip().lower() == "content"
        )
        self._recorder.record(
            "requests",
            request_row(
                request_id=incoming.request_id,
                received_at=received_at,
                route=route,
                method=incoming.method,
                raw_body=body,
                body=parsed,
                decision=decision,
                omit=omit,
            ),
        )
        return Capture(
            recorder=self._recorder,
            mirror=self._mirror,
            production=self._settings.production,
            request_id=incoming.request_id,
            route=route,
            body=parsed,
            stream=parsed is not None and parsed.get("stream") is True,
            decision=decision,
            omit=omit,
        )

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
            capture = self._begin_capture(incoming, body, received_at)
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
