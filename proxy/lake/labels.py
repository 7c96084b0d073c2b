"""Label records checked the same way whether they arrive over HTTP or in a file.

A label is `{request_id, kind, target, value, labeller, source}`. Values per kind are in
`proxy.lake.label_values`. `target`: empty for a `reference`; required for a `verdict`
(`production` or a candidate that has a response for that request); for a `preference`
the pair `"T1 vs T2"` with the names sorted (given or not), so the newest preference per
pair wins and preferences over different pairs of one request coexist; optional for an
`outcome` (empty or a known target).

`source` is one of human/system/judge/simulated (the caller picks the default). Checking
happens in two steps - `parse_item` needs no lake, `check_against_lake` uses a `LakeIndex`
of known request ids and their targets - and `validate` runs both: it returns every row or, if any item is bad, no row at all and every
reason, so nothing partial is ever written. Rows of one batch get created_at one microsecond
apart, so when a batch labels the same thing twice the later item wins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from proxy.ids import new_id
from proxy.lake.label_values import (
    BadLabel,
    pair_target,
    parse_cell,
    preference_value,
    verdict_value,
)
from proxy.lake.schema import LABEL_KINDS, LABEL_SOURCES, PRODUCTION

FIELDS = ("request_id", "kind", "target", "value", "labeller", "source")
# Accepted only where history is imported (a file exported with --history): kept as given.
HISTORY_FIELDS = ("label_id", "created_at")
MAX_TEXT = 256  # request ids, targets, labellers


@dataclass(frozen=True)
class LabelError:
    """Why one item was rejected; `item` is a 1-based line number or a 0-based array index."""

    item: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.item, "reason": self.reason}


@dataclass
class ParsedLabel:
    """One item whose shape is valid; the lake has not been consulted yet."""

    item: int
    request_id: str
    kind: str
    target: str | None
    value: Any
    labeller: str | None
    source: str
    label_id: str | None = None
    created_at: datetime | None = None

    def targets(self) -> list[str]:
        """The targets the lake must know for this request (verdict, preference, outcome)."""
        if self.kind == "preference":
            return [self.value["a"], self.value["b"]]
        return [self.target] if self.target is not None else []


@dataclass
class LakeIndex:
    """What the lake knows: request id -> targets with a response; label ids already stored."""

    targets: dict[str, set[str]] = field(default_factory=dict)
    label_ids: set[str] = field(default_factory=set)

    def merge(self, other: LakeIndex) -> LakeIndex:
        for rid, ts in other.targets.items():
            self.targets.setdefault(rid, set()).update(ts)
        self.label_ids |= other.label_ids
        return self


@dataclass
class Validation:
    """All rows ready for the `labels` dataset, or (when `errors` is not empty) none."""

    rows: list[dict[str, Any]]
    errors: list[LabelError]

    @property
    def ok(self) -> bool:
        return not self.errors


def _text(item: Mapping[str, Any], key: str, *, required: bool) -> str | None:
    raw = item.get(key)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if required:
            raise BadLabel(f"{key} is required")
        return None
    if not isinstance(raw, str):
        raise BadLabel(f"{key} must be a string, got {type(raw).__name__}")
    text = raw.strip()
    if len(text) > MAX_TEXT:
        raise BadLabel(f"{key} is longer than {MAX_TEXT} characters")
    return text


def _value(kind: str, item: Mapping[str, Any], from_text: bool) -> Any:
    if "value" not in item or item["value"] is None:
        raise BadLabel("value is required")
    value = item["value"]
    if from_text:
        if not isinstance(value, str) or not value.strip():
            raise BadLabel("value is required")
        value = parse_cell(kind, value)
    if kind == "verdict":
        return verdict_value(value)
    if kind == "preference":
        return preference_value(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise BadLabel("value must be finite")
    if kind == "reference" and isinstance(value, str) and not value.strip():
        raise BadLabel("a reference must not be empty")
    return value


def _created_at(raw: Any) -> datetime:
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadLabel(f"created_at is not an ISO 8601 time: {raw!r}") from None
    else:
        raise BadLabel("created_at must be an ISO 8601 time")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse(
    number: int,
    item: Any,
    *,
    from_text: bool,
    default_source: str,
    allow_history: bool,
) -> ParsedLabel:
    if not isinstance(item, Mapping):
        raise BadLabel(f"a label must be an object, got {type(item).__name__}")
    allowed = FIELDS + HISTORY_FIELDS if allow_history else FIELDS
    unknown = sorted(str(k) for k in item if k not in allowed)
    if unknown:
        raise BadLabel(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(allowed)}")
    request_id = _text(item, "request_id", required=True)
    kind = _text(item, "kind", required=True)
    if kind not in LABEL_KINDS:
        raise BadLabel(f"kind must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")
    source = _text(item, "source", required=False) or default_source
    if source not in LABEL_SOURCES:
        raise BadLabel(f"source must be one of {', '.join(LABEL_SOURCES)}, got {source!r}")
    target = _text(item, "target", required=False)
    value = _value(kind, item, from_text)
    if kind == "reference" and target is not None:
        raise BadLabel("a reference label has no target (it is about the request, not one output)")
    if kind == "verdict" and target is None:
        raise BadLabel("a verdict needs a target: 'production' or a candidate name")
    if kind == "preference":
        pair = pair_target(value["a"], value["b"])
        if target is not None and target != pair:
            raise BadLabel(f"a preference's target is its pair {pair!r} (or empty), got {target!r}")
        target = pair
    label_id = _text(item, "label_id", required=False) if allow_history else None
    raw_at = item.get("created_at") if allow_history else None
    created_at = _created_at(raw_at) if raw_at not in (None, "") else None
    assert request_id is not None and kind is not None  # required above
    return ParsedLabel(
        item=number,
        request_id=request_id,
        kind=kind,
        target=target,
        value=value,
        labeller=_text(item, "labeller", required=False),
        source=source,
        label_id=label_id,
        created_at=created_at,
    )


def parse_item(
    number: int,
    item: Any,
    *,
    from_text: bool = False,
    default_source: str = "human",
    allow_history: bool = False,
) -> ParsedLabel | LabelError:
    """Check one item's shape and value; `from_text` when values are CSV cells."""
    try:
        return _parse(
            number,
            item,
            from_text=from_text,
            default_source=default_source,
            allow_history=allow_history,
        )
    except BadLabel as exc:
        return LabelError(number, str(exc))


def check_against_lake(label: ParsedLabel, index: LakeIndex) -> str | None:
    """The reason the lake rejects a parsed label, or None when it is known there."""
    known = index.targets.get(label.request_id)
    if known is None:
        return f"unknown request id {label.request_id!r}"
    for target in label.targets():
        if target != PRODUCTION and target not in known:
            listed = ", ".join(sorted(known | {PRODUCTION}))
            return f"unknown target {target!r} for request {label.request_id!r} (known: {listed})"
    if label.label_id is not None and label.label_id in index.label_ids:
        return f"label {label.label_id!r} is already in the lake (imported before?)"
    return None


def to_row(label: ParsedLabel, created_at: datetime) -> dict[str, Any]:
    """The `labels` dataset row for a checked label."""
    return {
        "label_id": label.label_id or new_id(),
        "request_id": label.request_id,
        "kind": label.kind,
        "target": label.target,
        "value": json.dumps(label.value, ensure_ascii=False, sort_keys=True),
        "labeller": label.labeller,
        "source": label.source,
        "created_at": label.created_at or created_at,
    }


def parse_all(
    items: Iterable[tuple[int, Any]],
    *,
    from_text: bool = False,
    default_source: str = "human",
    allow_history: bool = False,
) -> tuple[list[ParsedLabel], list[LabelError]]:
    """Parse every numbered item; returns the good ones and every error."""
    parsed: list[ParsedLabel] = []
    errors: list[LabelError] = []
    for number, item in items:
        got = parse_item(
            number,
            item,
            from_text=from_text,
            default_source=default_source,
            allow_history=allow_history,
        )
        if isinstance(got, LabelError):
            errors.append(got)
        else:
            parsed.append(got)
    return parsed, errors


def finish(
    parsed: Sequence[ParsedLabel],
    errors: Sequence[LabelError],
    index: LakeIndex,
    now: datetime | None = None,
) -> Validation:
    """Check parsed labels against the lake; rows only when nothing at all is wrong."""
    all_errors = list(errors)
    for label in parsed:
        reason = check_against_lake(label, index)
        if reason is not None:
            all_errors.append(LabelError(label.item, reason))
    if all_errors:
        return Validation([], sorted(all_errors, key=lambda e: e.item))
    base = now or datetime.now(UTC)
    return Validation(
        [to_row(p, base + timedelta(microseconds=i)) for i, p in enumerate(parsed)], []
    )


def lake_index(
    con: duckdb.DuckDBPyConnection, request_ids: Iterable[str], label_ids: Iterable[str] = ()
) -> LakeIndex:
    """Look up, in an open lake (`proxy.lake.reader.connect`), the requests and label ids given."""
    ids = sorted(set(request_ids))
    index = LakeIndex()
    if ids:
        for (rid,) in con.execute(
            "SELECT DISTINCT request_id FROM requests WHERE request_id IN (SELECT unnest($ids))",
            {"ids": ids},
        ).fetchall():
            index.targets.setdefault(rid, set())
        for rid, target in con.execute(
            "SELECT DISTINCT request_id, target FROM responses "
            "WHERE request_id IN (SELECT unnest($ids)) AND target IS NOT NULL",
            {"ids": ids},
        ).fetchall():
            if rid in index.targets:
                index.targets[rid].add(target)
    wanted = sorted(set(label_ids))
    if wanted:
        index.label_ids = {
            r[0]
            for r in con.execute(
                "SELECT DISTINCT label_id FROM labels WHERE label_id IN (SELECT unnest($ids))",
                {"ids": wanted},
            ).fetchall()
        }
    return index


def validate(
    items: Iterable[tuple[int, Any]],
    con: duckdb.DuckDBPyConnection,
    *,
    from_text: bool = False,
    default_source: str = "human",
    allow_history: bool = False,
    now: datetime | None = None,
) -> Validation:
    """Parse numbered items and check them against an open lake: all rows or every error."""
    parsed, errors = parse_all(
        items, from_text=from_text, default_source=default_source, allow_history=allow_history
    )
    index = lake_index(
        con,
        (p.request_id for p in parsed),
        (p.label_id for p in parsed if p.label_id is not None),
    )
    return finish(parsed, errors, index, now)
