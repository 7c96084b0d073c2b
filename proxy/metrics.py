"""The proxy's own Prometheus metrics, on the registry of one app.

Each app gets its own `CollectorRegistry` (tests build many apps in one process), and
every component registers its metrics there; `/metrics` exposes that one registry.
Route labels are resource patterns (`/v1/chat/completions`, `/v1/{tail}`), never raw
paths, so the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from proxy.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

# Seconds; LLM calls range from tens of milliseconds (embeddings) to minutes (long streams).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class ProxyMetrics:
    """Requests by route and status, latency histograms, requests in flight.

    Updated on every request, so they are the lock-free instruments of `proxy.loop_metrics`:
    call them from the event loop's thread only (every request handler runs there).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register the metrics on `registry` (one registry per app)."""
        self.registry = registry
        self.requests = LoopCounter(
            "shadoweval_http_requests",
            "Requests answered by the proxy, by route pattern and HTTP status.",
            ["route", "status"],
            registry,
        )
        self.latency = LoopHistogram(
            "shadoweval_http_request_duration_seconds",
            "Time from receiving a request to the end of its response, by route pattern.",
            ["route"],
            LATENCY_BUCKETS,
            registry,
        )
        self.upstream_latency = LoopHistogram(
            "shadoweval_upstream_response_seconds",
            "Time from sending a request to production to its response headers, by route.",
            ["route"],
            LATENCY_BUCKETS,
            registry,
        )
        self.upstream_errors = LoopCounter(
            "shadoweval_upstream_errors",
            "Production calls that failed in the proxy (connect, timeout, invalid, dropped).",
            ["kind"],
            registry,
        )
        self.in_flight = LoopGauge(
            "shadoweval_http_requests_in_flight",
            "Requests the proxy is handling right now.",
            registry,
        )
        # Label tuples are route patterns, HTTP statuses and error kinds: a bounded set.
        self._statuses: dict[int, str] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        code = self._statuses.get(status)
        if code is None:
            code = self._statuses[status] = str(status)
        self.requests.inc((route, code))
        self.latency.observe((route,), seconds)

    def observe_upstream(self, route: str, seconds: float) -> None:
        """Time from sending a request to production to its response headers."""
        self.upstream_latency.observe((route,), seconds)

    def upstream_error(self, kind: str) -> None:
        """Count one production call that failed in the proxy."""
        self.upstream_errors.inc((kind,))


def metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A `/metrics` handler rendering `registry` in the Prometheus text format."""

    async def handle(request: web.Request) -> web.Response:
        """Render the registry; the client library picks text or OpenMetrics."""
        # The client library picks the format the scraper asks for (text or OpenMetrics).
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    return handle
