"""Liveness and readiness probes, for load balancers and orchestrators.

`/healthz` answers 200 while the process serves HTTP at all. `/readyz` answers 200 only
once every resource (upstream pool, recorder, mirror) has started and until shutdown
begins, so a load balancer stops sending new traffic before the proxy drains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web


@dataclass
class Lifecycle:
    """Where the app is in its life: starting, ready, or draining for shutdown."""

    started: bool = False
    draining: bool = False
    # time.monotonic() by which shutdown must be over; set when draining begins.
    deadline: float | None = None

    @property
    def ready(self) -> bool:
        """Serving new requests: started and not draining."""
        return self.started and not self.draining

    def begin_drain(self, grace_s: float) -> None:
        """Stop reporting ready; shutdown work must end within `grace_s` from now."""
        if not self.draining:
            self.draining = True
            self.deadline = time.monotonic() + grace_s

    def remaining_s(self, default: float) -> float:
        """Seconds left before the shutdown deadline (`default` when not draining)."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - time.monotonic())


def _json(status: int, state: str) -> web.Response:
    """A tiny JSON status answer."""
    return web.Response(
        status=status, body=b'{"status":"' + state.encode() + b'"}', content_type="application/json"
    )


def health_routes(lifecycle: Lifecycle) -> list[web.RouteDef]:
    """GET /healthz and GET /readyz for the given lifecycle."""

    async def healthz(request: web.Request) -> web.Response:
        """The process is alive and serving HTTP."""
        return _json(200, "ok")

    async def readyz(request: web.Request) -> web.Response:
        """Send traffic here: started and not shutting down."""
        if lifecycle.ready:
            return _json(200, "ready")
        return _json(503, "draining" if lifecycle.draining else "starting")

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]
