"""One answer of `proxy.upstream`'s pool: what the relay and the mirror read of it.

Status, reason and headers are there at once; the body is read as it arrives, through the
connection that carries it (`proxy.upstream_conn.Connection`). Headers stay the bytes they
arrived as: the relay passes them on without decoding and encoding them again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from proxy.upstream_conn import Connection


def decode(raw: bytes) -> str:
    """Header bytes as text, losslessly (encode with surrogateescape to get them back)."""
    return raw.decode("utf-8", "surrogateescape")


class UpstreamResponse:
    """One answer: status, reason and headers at once; the body as it arrives.

    Headers stay the bytes they arrived as (`raw_headers`): the relay passes them on without
    decoding and encoding them again. `content_type` and `content_encoding` (the first of
    each, or "") and `connection_names` (the header names `Connection` declares hop-by-hop,
    lower case) are read while the head is parsed; `headers` decodes the rest on first use.
    """

    __slots__ = (
        "_conn",
        "_done",
        "_headers",
        "connection_names",
        "content_encoding",
        "content_type",
        "raw_headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        status: int,
        reason: str,
        raw_headers: list[tuple[bytes, bytes]],
        conn: Connection,
        *,
        content_type: str = "",
        content_encoding: str = "",
        connection_names: frozenset[bytes] = frozenset(),
    ) -> None:
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.connection_names = connection_names
        self._headers: CIMultiDictProxy[str] | None = None
        self._conn = conn
        self._done = False  # released or closed: the connection may serve someone else now

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """Every header, decoded as aiohttp decodes them; repeated ones kept in order."""
        if self._headers is None:
            self._headers = CIMultiDictProxy(
                CIMultiDict((decode(n), decode(v)) for n, v in self.raw_headers)
            )
        return self._headers

    @property
    def body_complete(self) -> bool:
        """The whole body has arrived (buffered, not yet read) and nothing went wrong."""
        return self._conn.body_complete

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call; b"" once the body is complete."""
        return await self._conn.read_body()

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool when it can. Once."""
        if not self._done:
            self._done = True
            self._conn.finish()

    def close(self) -> None:
        """Abandon the answer; its connection is closed (unless already handed back)."""
        if not self._done:
            self._done = True
            self._conn.abort()
