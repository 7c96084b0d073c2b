"""How a candidate call travels: the lean pool of the live path, or an aiohttp session.

`ModelClient` measures and classifies; these adapters only post a JSON body and hand back
the answer's status, content type and body chunks as they arrive. An answer is finished
with `finish(complete)`: a complete one gives its connection back for reuse, anything else
closes it (unread bytes would corrupt the next answer on it).
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from proxy.config import CandidateSettings
from proxy.upstream import UpstreamPool, UpstreamResponse

# Set by the pool itself; a candidate's configured headers cannot override them.
_POOL_OWNED = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def candidate_pool(c: CandidateSettings) -> UpstreamPool:
    """A candidate's own keep-alive pool: as many connections as calls it may have in flight,
    every wait bounded by its timeout."""
    return UpstreamPool(
        c.base_url,
        limit=c.max_concurrency,
        connect_timeout=c.timeout_s,
        read_timeout=c.timeout_s,
        total_timeout=c.timeout_s,
    )


class Answer(Protocol):
    """A candidate's answer once its headers arrived."""

    status: int
    content_type: str

    async def read(self) -> bytes:
        """The next body bytes; b"" at the end."""

    def finish(self, complete: bool) -> None:
        """Done with the answer (`complete`: its body was read to the end)."""


class Transport(Protocol):
    """Posts one JSON body to a URL."""

    async def post(self, url: str, data: bytes) -> Answer:
        """Send; return once the answer's headers arrived."""


class _PoolAnswer:
    __slots__ = ("_resp", "content_type", "status")

    def __init__(self, resp: UpstreamResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.content_type = resp.content_type

    async def read(self) -> bytes:
        return await self._resp.read()

    def finish(self, complete: bool) -> None:
        if complete:
            self._resp.release()
        else:
            self._resp.close()


class PoolTransport:
    """Over an `UpstreamPool` to the candidate's origin (the mirror's choice)."""

    def __init__(self, pool: UpstreamPool, headers: CIMultiDict[str]) -> None:
        self._pool = pool
        self._headers = [
            (n.encode(), v.encode()) for n, v in headers.items() if n.lower() not in _POOL_OWNED
        ]
        # Bodies are read as sent: ask for them uncompressed.
        self._headers.append((b"Accept-Encoding", b"identity"))
        self._targets: dict[str, str] = {}  # url -> path and query (a candidate has a few)

    async def post(self, url: str, data: bytes) -> Answer:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            self._targets[url] = target
        return _PoolAnswer(await self._pool.request("POST", target, self._headers, data))


class _AiohttpAnswer:
    __slots__ = ("_resp", "content_type", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "")

    async def read(self) -> bytes:
        return await self._resp.content.readany()

    def finish(self, complete: bool) -> None:
        if complete:
            self._resp.release()
        else:
            self._resp.close()


class AiohttpTransport:
    """Over a shared aiohttp session the caller owns (replay's choice)."""

    def __init__(self, session: aiohttp.ClientSession, headers: CIMultiDict[str]) -> None:
        self._session = session
        self._headers = headers

    async def post(self, url: str, data: bytes) -> Answer:
        return _AiohttpAnswer(await self._session.post(url, data=data, headers=self._headers))
