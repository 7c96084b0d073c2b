"""Deciding whether one output is correct: scorers, reference parsing and verdict labels.

A scorer extracts the answer from an output (and where it sits, so confidence can be read
from the answer's tokens) and compares it with the `reference` label. A `verdict` label on
an output overrides the scorer; an output of another target that is identical after
normalisation inherits that verdict. Correctness is a float: 1.0, 0.0, or NaN when unknown.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from analysis.settings import ScorerRule

NAN = float("nan")

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


@dataclass(frozen=True)
class Extraction:
    """The answer an output gives, and its character span in the output (None if not found)."""

    answer: Any
    span: tuple[int, int] | None


NO_ANSWER = Extraction(None, None)


@lru_cache(maxsize=65536)
def normalize(text: str) -> str:
    """Case, width, punctuation and whitespace folded away: 'The  Answer!' -> 'the answer'."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", folded).split())


def decode_label_value(value: str | None) -> Any:
    """A label's `value` column (JSON text); text that is not JSON is taken as a string."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def reference_text(ref: Any) -> str | None:
    """A reference as text: strings as they are, an {"answer": …} object by its answer."""
    if ref is None:
        return None
    if isinstance(ref, str):
        return ref
    if isinstance(ref, dict):
        for key in ("answer", "reference", "label", "text", "value"):
            if key in ref:
                return reference_text(ref[key])
        return json.dumps(ref, sort_keys=True, ensure_ascii=False)
    if isinstance(ref, bool):
        return "true" if ref else "false"
    if isinstance(ref, int | float):
        return repr(ref) if isinstance(ref, float) else str(ref)
    return json.dumps(ref, ensure_ascii=False)


_TRUE = {"correct", "true", "yes", "right", "pass", "ok", "1", "accept", "accepted"}
_FALSE = {"incorrect", "false", "no", "wrong", "fail", "0", "reject", "rejected"}


def parse_verdict(value: Any) -> float:
    """A verdict label's value as a score in [0, 1]: true/false, 'correct', 0.7, {"correct": …}."""
    if isinstance(value, str) and value.strip().startswith(("{", "[", '"')):
        value = decode_label_value(value)
    if isinstance(value, dict):
        for key in ("correct", "verdict", "score", "value"):
            if key in value:
                return parse_verdict(value[key])
        return NAN
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        v = float(value)
        return v if 0.0 <= v <= 1.0 else NAN
    if isinstance(value, str):
        word = value.strip().casefold()
        if word in _TRUE:
            return 1.0
        if word in _FALSE:
            return 0.0
        try:
            return parse_verdict(float(word))
        except ValueError:
            return NAN
    return NAN


def _strip_span(text: str) -> Extraction:
    stripped = text.strip()
    if not stripped:
        return NO_ANSWER
    start = len(text) - len(text.lstrip())
    return Extraction(stripped, (start, start + len(stripped)))


def parse_json_output(text: str) -> Any:
    """The JSON object an output holds, tolerating code fences and text around it."""
    m = _FENCE.match(text)
    body = m.group(1) if m else text
    try:
        return json.loads(body)
    except ValueError:
        pass
    start, end = body.find("{"), body.rfind("}")
    if 0 <= start < end:
        try:
            return json.loads(body[start : end + 1])
        except ValueError:
            return None
    return None


_MISSING = object()


def get_path(obj: Any, path: str) -> Any:
    """`a.b.0.c` into nested dicts and lists; the sentinel _MISSING when absent."""
    for part in path.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif (
            isinstance(obj, list)
            and part.lstrip("-").isdigit()
            and -len(obj) <= int(part) < len(obj)
        ):
            obj = obj[int(part)]
        else:
            return _MISSING
    return obj


def _json_field(text: str, path: str) -> Extraction:
    value = get_path(parse_json_output(text), path)
    if value is _MISSING:
        return NO_ANSWER
    raw = value if isinstance(value, str) else json.dumps(value)
    key = path.rsplit(".", 1)[-1]
    after = text.find(f'"{key}"')
    idx = text.find(raw, max(after, 0))
    if idx < 0:
        idx = text.find(raw)
    return Extraction(value, (idx, idx + len(raw)) if idx >= 0 and raw else None)


def _regex(text: str, pattern: str, group: int | str) -> Extraction:
    m = _compiled(pattern).search(text)
    if m is None or m.group(group) is None:
        return NO_ANSWER
    return Extraction(m.group(group), m.span(group))


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@lru_cache(maxsize=64)
def _choice_patterns(choices: str) -> tuple[re.Pattern[str], ...]:
    letters = re.escape(choices.upper())
    return (
        re.compile(
            rf"(?i:answer|choice|option)\s*(?i:is)?\s*[:\-]?\s*\(?([{letters}])\)?(?![A-Za-z])"
        ),
        re.compile(rf"^\s*\(?([{letters}])\)?(?:[.):\s]|$)"),
        re.compile(rf"\(([{letters}])\)"),
        re.compile(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])"),
    )


def _choice(text: str, choices: str) -> Extraction:
    stripped = text.strip()
    if len(stripped) == 1 and stripped.upper() in choices.upper():
        start = text.index(stripped)
        return Extraction(stripped.upper(), (start, start + 1))
    for pattern in _choice_patterns(choices):
        m = pattern.search(text)
        if m:
            return Extraction(m.group(1).upper(), m.span(1))
    return NO_ANSWER


def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _numeric(text: str) -> Extraction:
    last = None
    for last in _NUMBER.finditer(text):  # noqa: B007 - the last number is the answer
        pass
    if last is None:
        return NO_ANSWER
    value = _to_number(last.group(0))
    return Extraction(value, last.span()) if value is not None else NO_ANSWER


def extract(rule: ScorerRule, text: str | None) -> Extraction:
    """The answer an output gives under a scoring rule."""
    if text is None:
        return NO_ANSWER
    if rule.kind == "json_field":
        return _json_field(text, rule.path or "")
    if rule.kind == "regex":
        return _regex(text, rule.pattern or "", rule.group)
    if rule.kind == "choice":
        return _choice(text, rule.choices)
    if rule.kind == "numeric":
        return _numeric(text)
    return _strip_span(text)


def _equal(answer: Any, ref: Any) -> bool:
    if isinstance(answer, bool) or isinstance(ref, bool):
        return answer == ref
    if isinstance(answer, int | float) and isinstance(ref, int | float):
        return math.isclose(float(answer), float(ref), rel_tol=0.0, abs_tol=1e-9)
    if isinstance(answer, dict | list) or isinstance(ref, dict | list):
        return answer == ref
    a, r = reference_text(answer), reference_text(ref)
    return a is not None and r is not None and normalize(a) == normalize(r)


def compare(rule: ScorerRule, found: Extraction, text: str, ref: Any) -> float:
    """1.0 or 0.0 for an extraction against a decoded reference (NaN without a reference)."""
    if ref is None or rule.kind == "judge":
        return NAN
    answer = found.answer
    if rule.kind == "exact":
        if isinstance(ref, str):
            return float(text.strip() == ref.strip())
        return float(parse_json_output(text) == ref)
    if answer is None:
        return 0.0
    if rule.kind == "json_field":
        expected = get_path(ref, rule.path or "") if isinstance(ref, dict | list) else ref
        return float(expected is not _MISSING and _equal(answer, expected))
    if rule.kind == "choice":
        letter = _choice(reference_text(ref) or "", rule.choices).answer
        return float(letter is not None and letter == answer)
    if rule.kind == "numeric":
        expected = ref if isinstance(ref, int | float) and not isinstance(ref, bool) else None
        if expected is None:
            expected = _numeric(reference_text(ref) or "").answer
        if expected is None:
            return NAN
        tol = rule.tolerance + rule.relative * abs(float(expected))
        return float(abs(float(answer) - float(expected)) <= tol + 1e-12)
    ref_text = reference_text(ref) or ""
    if rule.kind == "contains":
        return float(f" {normalize(ref_text)} " in f" {normalize(text)} ")
    return float(_equal(answer, ref_text))  # normalized, regex


def score_outputs(
    rule: ScorerRule, texts: Sequence[str | None], refs: Sequence[Any]
) -> tuple[list[float], list[Extraction]]:
    """Score many outputs under one rule; identical (output, reference) pairs are scored once."""
    scores: list[float] = []
    found: list[Extraction] = []
    cache: dict[tuple[str, str], tuple[float, Extraction]] = {}
    for text, ref in zip(texts, refs, strict=True):
        if text is None:
            scores.append(NAN if ref is None or rule.kind == "judge" else 0.0)
            found.append(NO_ANSWER)
            continue
        key = (text, json.dumps(ref, sort_keys=True, default=str))
        hit = cache.get(key)
        if hit is None:
            ex = extract(rule, text)
            hit = (compare(rule, ex, text, ref), ex)
            cache[key] = hit
        scores.append(hit[0])
        found.append(hit[1])
    return scores, found


def answer_label(found: Extraction) -> str | None:
    """The extracted answer as a label (for agreement and the cost matrix)."""
    if found.answer is None:
        return None
    text = reference_text(found.answer)
    return normalize(text) if text is not None else None


@dataclass(frozen=True)
class Verdict:
    """A verdict label on one (request, target) output: its score and when it was given."""

    score: float
    created_at: float  # seconds since the epoch; the newest verdict wins among equals
    source: str | None = None


def apply_verdicts(
    request_ids: Sequence[str],
    targets: Sequence[str],
    texts: Sequence[str | None],
    scores: Sequence[float],
    verdicts: dict[tuple[str, str], Verdict],
) -> tuple[list[float], list[str | None]]:
    """Scores after verdict labels, and where each came from.

    Origin is 'verdict' (a label on this output), 'inherited' (a label on another target's
    output that is identical after normalisation), 'scorer' (compared with the reference)
    or None (unknown: no reference and no verdict).
    """
    by_text: dict[tuple[str, str], Verdict] = {}
    for rid, target, text in zip(request_ids, targets, texts, strict=True):
        v = verdicts.get((rid, target))
        if v is None or math.isnan(v.score) or text is None:
            continue
        key = (rid, normalize(text))
        if key not in by_text or by_text[key].created_at < v.created_at:
            by_text[key] = v
    out: list[float] = []
    origin: list[str | None] = []
    for rid, target, text, s in zip(request_ids, targets, texts, scores, strict=True):
        own = verdicts.get((rid, target))
        if own is not None and not math.isnan(own.score):
            out.append(own.score)
            origin.append("verdict")
            continue
        inherited = by_text.get((rid, normalize(text))) if text is not None else None
        if inherited is not None:
            out.append(inherited.score)
            origin.append("inherited")
        else:
            out.append(s)
            origin.append(None if math.isnan(s) else "scorer")
    return out, origin
