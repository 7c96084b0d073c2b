"""A relayed answer written through aiohttp's server: the `ClientAnswer` of requests the
lean front hands over (`proxy.front_answer` writes those it serves itself).

Each write is bounded: a client that takes nothing for `server.client_write_timeout_s`
is cut off (`proxy.stall`), and the relay records the answer as `dropped`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import structlog
from aiohttp import web

from proxy.stall import StallWatch, stalled_error
from proxy.upstream_response import decode

log = structlog.get_logger("shadoweval.proxy")


class _WholeAnswer(web.StreamResponse):
    """A relayed answer whose body is already here: headers wait for the body's first write.

    aiohttp's own `web.Response` holds its headers back the same way; if a later aiohttp
    drops the attribute, answers merely go out in two writes instead of one.
    """

    _send_headers_immediately = False


def _cut_off(transport: asyncio.Transport) -> None:
    """A client of aiohttp's server that stopped reading: close at once, unsent bytes and all."""
    log.warning("client stopped reading: connection closed")
    transport.abort()


class AiohttpAnswer:
    """A relayed answer written through aiohttp's server (`response` is the handler's result).

    A write during which the client takes nothing for `write_timeout_s` closes the
    connection and raises ClientStalled (`proxy.stall`).
    """

    __slots__ = ("_request", "_write_timeout_s", "response")

    def __init__(self, request: web.Request, write_timeout_s: float) -> None:
        self._request = request
        self._write_timeout_s = write_timeout_s
        self.response: web.StreamResponse | None = None

    async def _bounded(self, write: Awaitable[object]) -> None:
        """Await one of aiohttp's writes; a client that takes nothing meanwhile is cut off."""
        transport = self._request.transport
        if transport is None:  # gone already: aiohttp raises
            await write
            return
        watch = StallWatch(transport, self._write_timeout_s, lambda: _cut_off(transport))
        try:
            await write
        except (ConnectionError, asyncio.CancelledError):
            if not watch.stalled:
                raise
            # Our abort is why aiohttp failed the write or cancelled the handler.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            raise stalled_error(self._write_timeout_s) from None
        finally:
            watch.cancel()
        if watch.stalled:  # cut off, though the write itself returned
            raise stalled_error(self._write_timeout_s)

    async def start(
        self, status: int, reason: str, headers: list[tuple[bytes, bytes]], whole: bool
    ) -> None:
        """Prepare the response; an answer that arrived whole leaves in one write."""
        kind = _WholeAnswer if whole else web.StreamResponse
        pairs = [(decode(name), decode(value)) for name, value in headers]
        self.response = kind(status=status, reason=reason, headers=pairs)
        await self._bounded(self.response.prepare(self._request))

    async def write(self, chunk: bytes) -> None:
        """One body chunk."""
        assert self.response is not None
        await self._bounded(self.response.write(chunk))

    async def end(self) -> None:
        """The last chunk, and the connection back to keep-alive."""
        assert self.response is not None
        await self._bounded(self.response.write_eof())

    def abort(self) -> None:
        """Close the client's connection: a cut-off answer must never look complete."""
        if self._request.transport is not None:
            self._request.transport.close()
