"""A client that takes none of its answer for a while, told apart from one that reads slowly.

While an answer waits for the client to read (the proxy's send buffer is over its high-water
mark), a `StallWatch` looks at what is queued for the client every
`server.client_write_timeout_s`: the transport's buffer plus, on Linux, the bytes the kernel
holds unacknowledged (SIOCOUTQ; the kernel's send buffer holds megabytes and accepts more
only in large steps, so the transport's buffer alone can stand still while a slow client
reads). If the queue did not shrink since the last look, the client has taken no byte in that
time and `on_stall` runs (the caller closes the connection and raises `ClientStalled`). A client that reads, however
slowly, keeps its connection; one that stopped reading holds the connection, the buffered
answer and production's connection for at most about twice the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios
from collections.abc import Callable

from proxy.errors import ClientStalled

_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # the same request as SIOCOUTQ on Linux


def queued_bytes(transport: asyncio.WriteTransport) -> int:
    """Bytes written to `transport` that the client has not acknowledged yet (as far as known)."""
    size = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None and _SIOCOUTQ is not None:
        # Not a TCP socket here, or closed meanwhile: the transport's buffer alone.
        with contextlib.suppress(OSError, ValueError):
            size += struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
    return size


def stalled_error(timeout_s: float) -> ClientStalled:
    """The error a stalled write raises into the relay."""
    return ClientStalled(f"client read nothing of its answer for {timeout_s:g} s: disconnected")


class StallWatch:
    """Runs `on_stall` once what is queued for the client has not shrunk for `timeout_s`.

    The first measure is taken on the loop's next turn, once the writer that started the
    watch has queued its bytes and is waiting (a write that did not have to wait cancels the
    watch before it has cost a system call).
    """

    __slots__ = ("_on_stall", "_size", "_timeout_s", "_timer", "_transport", "stalled")

    def __init__(
        self, transport: asyncio.WriteTransport, timeout_s: float, on_stall: Callable[[], None]
    ) -> None:
        self._transport = transport
        self._timeout_s = timeout_s
        self._on_stall = on_stall
        self._size = -1
        self.stalled = False
        self._timer: asyncio.Handle = asyncio.get_running_loop().call_soon(self._look)

    def _look(self) -> None:
        size = queued_bytes(self._transport)
        if self._size < 0 or size == 0 or size < self._size:
            # The first measure, or the client took bytes: it may take its time.
            if size == 0 and self._transport.is_closing():
                return  # closed with nothing left to send: nothing to wait for
            self._size = size
            self._timer = asyncio.get_running_loop().call_later(self._timeout_s, self._look)
            return
        self.stalled = True
        self._on_stall()

    def cancel(self) -> None:
        """The wait is over (the buffer drained, or the connection went): stop looking."""
        self._timer.cancel()
