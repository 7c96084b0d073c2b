"""Time-ordered request ids: 26 characters, Crockford base32, sortable by creation time.

The first 10 characters encode milliseconds since the epoch, the last 16 are random,
so ids from many processes sort by time and never collide in practice (ULID layout).
"""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def new_id(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    return _encode(ms, 10) + _encode(rand, 16)


def id_time_ms(request_id: str) -> int | None:
    """The creation time of an id made by `new_id`, or None for a client-chosen id."""
    head = request_id[:10].upper()
    if len(request_id) != 26 or any(c not in _ALPHABET for c in head):
        return None
    value = 0
    for c in head:
        value = value * 32 + _ALPHABET.index(c)
    return value


def is_acceptable_client_id(value: str) -> bool:
    """A client may choose its own id: printable, short, no spaces or path characters."""
    return bool(_VALID.match(value))
