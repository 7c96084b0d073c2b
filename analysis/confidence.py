"""How sure a model was of one output: from its token logprobs, or from what it said.

Logprobs come as recorded in `responses.logprobs`: the JSON text of the OpenAI chat
`logprobs.content` list, `[{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]`.
`first_token` reads the first token of the extracted answer and sums the probability of the
alternatives in its `top_logprobs` that spell the same token (" Billing", "billing"), so a
tokeniser's spelling variants do not split the mass; `product` multiplies the probabilities
of every answer token. A verbalized confidence is a number the model wrote (0-1 or a
percentage) in a JSON field or a regex group. Unknown confidence is NaN.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from analysis.scoring import Extraction, get_path, parse_json_output
from analysis.settings import ConfidenceSettings

NAN = float("nan")


@dataclass(frozen=True)
class Token:
    """One generated token, its log probability and the alternatives the model considered."""

    text: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def _items(text: str | None) -> list[dict[str, Any]] | None:
    """The raw token dicts of a logprobs JSON text, or None when it is not usable."""
    if not text:
        return None
    try:
        data: Any = orjson.loads(text)
    except (TypeError, ValueError):
        return None
    if isinstance(data, dict):
        data = data.get("content")
    if not isinstance(data, list) or not data:
        return None
    for item in data:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("token"), str)
            and isinstance(item.get("logprob"), int | float)
        ):
            return None
    return data


def _token(item: dict[str, Any]) -> Token:
    top = tuple(
        (str(t["token"]), float(t["logprob"]))
        for t in item.get("top_logprobs") or ()
        if isinstance(t, dict) and isinstance(t.get("logprob"), int | float) and "token" in t
    )
    return Token(item["token"], float(item["logprob"]), top)


def parse_logprobs(text: str | None) -> list[Token] | None:
    """The token list of a recorded logprobs JSON text (a list, or an object with `content`)."""
    items = _items(text)
    return None if items is None else [_token(item) for item in items]


def _answer_tokens(texts: list[str], output: str | None, found: Extraction) -> list[int]:
    """Indices of the tokens that spell the extracted answer (all non-blank ones if unknown)."""
    joined = "".join(texts)
    span = found.span if output is not None and joined == output else None
    if span is None and found.answer is not None:
        answer = found.answer if isinstance(found.answer, str) else json.dumps(found.answer)
        idx = joined.find(answer) if answer else -1
        span = (idx, idx + len(answer)) if idx >= 0 else None
    picked = []
    pos = 0
    for i, text in enumerate(texts):
        start, end = pos, pos + len(text)
        pos = end
        if span is not None and (start >= span[1] or end <= span[0]):
            continue
        if text.strip():
            picked.append(i)
    return picked


def _variant(token: str) -> str:
    return token.strip().casefold()


def first_token_probability(token: Token) -> float:
    """P(this token, in any spelling that differs only by case or surrounding blanks)."""
    if not token.top:
        return math.exp(token.logprob)
    want = _variant(token.text)
    total = sum(math.exp(lp) for t, lp in token.top if _variant(t) == want)
    if not any(t == token.text for t, _ in token.top):
        total += math.exp(token.logprob)
    return min(total, 1.0)


def logprob_confidence(
    logprobs: str | None, output: str | None, found: Extraction, mode: str = "first_token"
) -> float:
    """The probability the model gave its extracted answer; NaN without usable logprobs."""
    items = _items(logprobs)
    if items is None:
        return NAN
    picked = _answer_tokens([item["token"] for item in items], output, found)
    if not picked:
        return NAN
    if mode == "product":
        return math.exp(sum(float(items[i]["logprob"]) for i in picked))
    return first_token_probability(_token(items[picked[0]]))


def _as_probability(value: Any) -> float:
    if isinstance(value, bool):
        return NAN
    if isinstance(value, str):
        text = value.strip().rstrip("%").strip()
        try:
            number = float(text)
        except ValueError:
            return NAN
        if value.strip().endswith("%"):
            number /= 100.0
        value = number
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return NAN
    value = float(value)
    if value > 1.0:
        value = value / 100.0 if value <= 100.0 else NAN
    return value


def verbalized_confidence(output: str | None, settings: ConfidenceSettings) -> float:
    """The confidence the model wrote itself: 0.83, "83%" or 83 all read as 0.83."""
    if output is None:
        return NAN
    if settings.path:
        value = get_path(parse_json_output(output), settings.path)
        return _as_probability(value) if isinstance(value, int | float | str) else NAN
    m = re.search(settings.pattern or "", output)
    if m is None or m.group(settings.group) is None:
        return NAN
    return _as_probability(m.group(settings.group))


def confidences(
    settings: ConfidenceSettings,
    outputs: Sequence[str | None],
    logprobs: Sequence[str | None],
    found: Sequence[Extraction],
) -> np.ndarray:
    """One confidence per output under the configured method (NaN where unknown)."""
    n = len(outputs)
    if settings.method == "none":
        return np.full(n, NAN)
    if settings.method == "verbalized":
        return np.array([verbalized_confidence(o, settings) for o in outputs], dtype=float)
    return np.array(
        [
            logprob_confidence(lp, o, f, settings.mode)
            for o, lp, f in zip(outputs, logprobs, found, strict=True)
        ],
        dtype=float,
    )
