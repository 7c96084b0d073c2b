"""The value of a label, per kind, in the form the lake stores (JSON text in `value`).

- `reference`: the correct answer for the request - any JSON value (text, number, object,
  list). A reference is about the request, not about one output.
- `verdict`: whether one target's output is right - `true`/`false`, `"correct"`/`"incorrect"`
  (also `"true"`/`"false"`), a score in [0, 1], or an object with `correct` (bool) and/or
  `score` (in [0, 1]) plus any other keys (e.g. `comment`). Words are stored as booleans.
- `preference`: which of two outputs is better - `{"a": T1, "b": T2, "winner": "a"|"b"|"tie"}`
  plus any other keys; T1 and T2 are distinct targets. Its `target` column is the pair,
  `pair_target(T1, T2)`.
- `outcome`: a business signal (the user accepted the answer, the ticket was re-routed) -
  any JSON value.

A value in a CSV cell is text: `parse_cell` turns it into the value it means.
"""

from __future__ import annotations

import json
import math
from typing import Any

PAIR_SEPARATOR = " vs "
WINNERS = ("a", "b", "tie")
_TRUE_WORDS = {"correct", "true"}
_FALSE_WORDS = {"incorrect", "false"}


class BadLabel(ValueError):
    """One reason a label item is invalid; its message is shown to the user."""


def _score(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise BadLabel(f"{what} must be a number in [0, 1], got {json.dumps(x)}")
    if not 0.0 <= x <= 1.0:
        raise BadLabel(f"{what} must be in [0, 1], got {x}")
    return float(x) if isinstance(x, float) else x


def verdict_value(value: Any) -> Any:
    """A verdict in its stored form: a bool, a score in [0, 1], or an object; else BadLabel."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _score(value, "a verdict score")
    if isinstance(value, str):
        word = value.strip().casefold()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise BadLabel(
            f"verdict must be true/false, 'correct'/'incorrect' or a score in [0, 1], got {value!r}"
        )
    if isinstance(value, dict):
        if "correct" not in value and "score" not in value:
            raise BadLabel("a verdict object needs 'correct' (true/false) or 'score' (0..1)")
        if "correct" in value and not isinstance(value["correct"], bool):
            raise BadLabel("verdict 'correct' must be true or false")
        if "score" in value:
            _score(value["score"], "verdict 'score'")
        return value
    raise BadLabel(
        f"verdict must be a boolean, a word, a score or an object, got {json.dumps(value)}"
    )


def preference_value(value: Any) -> dict[str, Any]:
    """A preference object {"a", "b", "winner"} checked for shape; else BadLabel."""
    if not isinstance(value, dict):
        raise BadLabel(
            'preference must be an object {"a": target, "b": target, "winner": "a"|"b"|"tie"}'
        )
    for key in ("a", "b"):
        if not isinstance(value.get(key), str) or not value[key].strip():
            raise BadLabel(f"preference needs '{key}': the name of a target")
    if value["a"].strip() == value["b"].strip():
        raise BadLabel("preference 'a' and 'b' must be different targets")
    if value.get("winner") not in WINNERS:
        raise BadLabel(f"preference 'winner' must be one of {', '.join(WINNERS)}")
    return {**value, "a": value["a"].strip(), "b": value["b"].strip()}


def pair_target(a: str, b: str) -> str:
    """The `target` column of a preference: both names sorted, so (a, b) and (b, a) match."""
    x, y = sorted((a, b))
    return f"{x}{PAIR_SEPARATOR}{y}"


def parse_cell(kind: str, cell: str) -> Any:
    """A CSV cell as the value it means for `kind`.

    reference: text as it is, unless it is a JSON object, list or quoted string;
    verdict, preference, outcome: JSON when it parses (1, 0.7, true, {...}), else text.
    """
    text = cell.strip()
    if kind == "reference":
        if text[:1] in ("{", "[", '"'):
            try:
                return json.loads(text)
            except ValueError:
                return cell
        return cell
    try:
        return json.loads(text)
    except ValueError:
        return text
