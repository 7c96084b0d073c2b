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
# The random part is 16 random bytes, each mapped to one character by its low 5 bits
# (256 is a multiple of 32, so every character is equally likely): 80 random bits, turned
# into text by one bytes.translate() in C instead of 16 Python-level lookups.
_RANDOM_CHARS = 16
_TO_CHAR = bytes(ord(_ALPHABET[b & 31]) for b in range(256))
# Random bytes come from the OS 4 KiB at a time: one getrandom() call per 256 ids instead of
# one per id. A forked worker must not replay its parent's buffer, so fork empties it.
_RANDOM_BYTES = 4096
_random = b""
_offset = _RANDOM_BYTES
# The time part changes once a millisecond: the last one is kept, with its millisecond in one
# tuple (read and replaced whole, so a thread never pairs one's millisecond with another's).
_last_time: tuple[int, str] = (-1, "")


def _reset_random() -> None:
    global _random, _offset
    _random, _offset = b"", _RANDOM_BYTES


os.register_at_fork(after_in_child=_reset_random)


def _random_part() -> str:
    global _random, _offset
    if _offset + _RANDOM_CHARS > len(_random):
        _random, _offset = os.urandom(_RANDOM_BYTES), 0
    start = _offset
    _offset = start + _RANDOM_CHARS
    return _random[start : start + _RANDOM_CHARS].translate(_TO_CHAR).decode("ascii")


def _time_part(ms: int) -> str:
    """48 bits of milliseconds as 10 characters, most significant first."""
    global _last_time
    last = _last_time
    if last[0] == ms:
        return last[1]
    low = ms & 0xFFFF_FFFF_FFFF
    part = "".join([_ALPHABET[(low >> shift) & 31] for shift in range(45, -1, -5)])
    _last_time = (ms, part)
    return part


def new_id(now_ms: int | None = None) -> str:
    """A new id: 48 bits of milliseconds, then 80 random bits, as 26 base32 characters."""
    return _time_part(int(time.time() * 1000) if now_ms is None else now_ms) + _random_part()


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


REQUEST_ID_HEADER = "x-shadow-request-id"


def request_id_for(client_value: str | None) -> str:
    """A request's id: the client's own `x-shadow-request-id` if acceptable, else a new one."""
    if client_value is not None and is_acceptable_client_id(client_value):
        return client_value
    return new_id()
