"""Blinding: outputs shown as 'Output A, B, ...' in an order no labeller can tie to a target.

The order is a shuffle seeded by an HMAC of (labeller, request id) under a key the server
draws at start, so it is random per item and per labeller, stable on reload, and cannot be
worked out from the page. Outputs whose text is identical (after trimming whitespace) are
shown once: one verdict then applies to every target that gave it, which saves work and
keeps the verdicts on identical answers consistent. Target names leave the server only on
the reveal page, after the labeller has submitted the item.

The layout token is a digest of what was shown; a submission made against a page whose
outputs have changed since (a replay added a target) is refused and shown again.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import string
from dataclasses import dataclass

from analysis.labelui.store import Item


@dataclass(frozen=True)
class Card:
    """One blinded output: its letter, its text and the target(s) that gave it."""

    letter: str
    text: str
    finish_reason: str | None
    targets: tuple[str, ...]


def letter(i: int) -> str:
    """A, B, ..., Z, AA, AB, ...: a label that carries no meaning."""
    letters = string.ascii_uppercase
    out = ""
    i += 1
    while i:
        i, rem = divmod(i - 1, 26)
        out = letters[rem] + out
    return out


def _digest(key: bytes, *parts: str) -> bytes:
    return hmac.new(key, "\x00".join(parts).encode(), hashlib.sha256).digest()


def blind(item: Item, labeller: str, key: bytes) -> list[Card]:
    """The item's outputs grouped by identical text, lettered in this labeller's order."""
    groups: dict[str, list[str]] = {}
    finish: dict[str, str | None] = {}
    for target in sorted(item.outputs):
        out = item.outputs[target]
        text = out.text.strip()
        groups.setdefault(text, []).append(target)
        finish.setdefault(text, out.finish_reason)
    ordered = sorted(groups.items(), key=lambda kv: kv[1][0])
    rng = random.Random(_digest(key, "order", labeller, item.request_id))
    rng.shuffle(ordered)
    return [
        Card(letter(i), text, finish[text], tuple(targets))
        for i, (text, targets) in enumerate(ordered)
    ]


def layout_token(cards: list[Card], labeller: str, request_id: str, key: bytes) -> str:
    """A short digest of what a page showed, checked when the page is submitted."""
    shown = [f"{c.letter}={','.join(c.targets)}:{c.text}" for c in cards]
    return _digest(key, "layout", labeller, request_id, *shown).hex()[:32]
