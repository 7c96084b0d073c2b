"""The lean front's listening side: the connections it shares state across, and the site.

`Front` is what every lean-front connection (`proxy.front.FrontProtocol`) shares: the /v1
path, the metrics, the running requests, the keep-alive sweep and the drain. `FrontSite`
listens like aiohttp's `TCPSite`, but its connections start on the lean front; aiohttp's
runner still owns it, so `runner.cleanup()` stops it first and then drains the connections
that were handed to aiohttp.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from proxy.front import FrontProtocol
from proxy.metrics import ProxyMetrics
from proxy.tasks import TaskSet
from proxy.v1 import V1Service

log = structlog.get_logger("shadoweval.proxy")

# An idle keep-alive connection is closed after this long: aiohttp's own default, so a load
# balancer in front sees the same server whether or not the front is on.
KEEPALIVE_S = 3630.0
_SWEEP_S = 5.0


class Front:
    """What every lean-front connection shares: the /v1 path, metrics, and the drain."""

    def __init__(
        self,
        app: web.Application,
        aiohttp_server: web.Server,
        service: V1Service,
        metrics: ProxyMetrics,
        access_log: bool,
        *,
        write_timeout_s: float,
    ) -> None:
        self.app = app
        self.aiohttp_server = aiohttp_server
        self.service = service
        self.metrics = metrics
        self.access_log = access_log
        self.write_timeout_s = write_timeout_s  # see server.client_write_timeout_s
        self.body_limit = service.body_limit
        self.tasks = TaskSet("front")
        self.connections: set[FrontProtocol] = set()
        self.draining = False
        self.requests_served = 0  # requests this front served itself
        self.connections_handed_off = 0  # connections given to aiohttp's server
        self._sweeper: asyncio.TimerHandle | None = None

    def protocol(self) -> FrontProtocol:
        """The protocol factory for `loop.create_server`."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_S, self._sweep)
        return FrontProtocol(self)

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive timeout."""
        now = time.monotonic()
        for conn in list(self.connections):
            conn.close_if_idle_since(now - KEEPALIVE_S)
        self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_S, self._sweep)

    async def drain(self, grace_s: float) -> None:
        """Close idle connections, let busy ones finish their answer, cancel what is left."""
        self.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.close_if_idle_since(float("inf"))
        if not await self.tasks.wait(grace_s):
            log.warning("requests still running at shutdown: cancelled", count=len(self.tasks))
            await self.tasks.cancel_all()
        for conn in list(self.connections):
            conn.kill()  # closed but never flushed: a client that stopped reading


class FrontSite(web.BaseSite):
    """A TCP site whose connections start on the lean front (aiohttp's runner still owns it).

    Stopping it stops accepting, then drains the front's own connections within `grace_s`;
    connections handed to aiohttp are drained by aiohttp's runner, as always.
    """

    def __init__(
        self,
        runner: web.AppRunner,
        front: Front,
        host: str,
        port: int,
        *,
        grace_s: float,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self.front = front
        self._host = host
        self._port = port
        self._grace_s = grace_s
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self.front.protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting; drain the front's connections and aiohttp's at the same time."""
        if self._server is not None:
            self._server.close()
        aio = self._runner.server
        if aio is not None:
            # What the runner does after its sites stop, done now: idle handed-off
            # connections close, busy ones drain within the same grace period as ours.
            pre_shutdown = getattr(aio, "pre_shutdown", None)  # aiohttp >= 3.10
            if pre_shutdown is not None:
                pre_shutdown()
            await asyncio.gather(self.front.drain(self._grace_s), aio.shutdown(self._grace_s))
        else:
            await self.front.drain(self._grace_s)
        await super().stop()
