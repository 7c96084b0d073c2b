"""Turn buffered row dicts into Arrow tables ready to be segments: content rules, redaction, days.

This is the recorder's CPU work, run in its flush thread, never on the event loop: content
columns are nulled where content must not be stored (`_omit_content` on a row, or
`storage.store_content: false`), redacted otherwise, rows are split by the UTC day of the
dataset's time column, and a row whose value cannot be converted to its column's type is
set aside (and reported by the caller) instead of failing the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from proxy.lake.redaction import Redactor
from proxy.lake.schema import SCHEMA_VERSION, Dataset

log = structlog.get_logger("shadoweval.lake")

OMIT_KEY = "_omit_content"
# Content columns holding JSON text: redacted inside their string values.
JSON_COLUMNS = frozenset({"body", "logprobs"})
# Columns that are not content (kept when content is omitted) but may echo a secret, such as
# an upstream error message quoting the API key it rejected.
SCRUB_COLUMNS: dict[str, tuple[str, ...]] = {"responses": ("error_detail",)}
_warned_keys: set[tuple[str, str]] = set()


@dataclass
class Prepared:
    """One segment's worth of rows, converted and redacted, waiting to be written."""

    dataset: str
    day: str
    table: pa.Table
    attempts: int = 0


@dataclass
class Rejected:
    """Rows set aside because a value could not be converted, with the reason per column."""

    count: int = 0
    reasons: dict[str, str] = field(default_factory=dict)


def as_text(value: Any) -> str | None:
    """A content value as text: bytes are decoded, parsed JSON is serialised."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class TableBuilder:
    """Builds segment tables for one writer, with its redaction and content settings."""

    def __init__(self, writer_id: str, redactor: Redactor, *, store_content: bool = True) -> None:
        self.writer_id = writer_id
        self.redactor = redactor
        self.store_content = store_content

    def prepare(
        self, ds: Dataset, rows: Sequence[Mapping[str, Any]]
    ) -> tuple[list[Prepared], Rejected]:
        """Convert rows into one table per UTC day; unconvertible rows are returned as rejected."""
        self._warn_unknown_keys(ds, rows[0])
        rejected = Rejected()
        bad: set[int] = set()
        table = self._table(ds, rows, bad, rejected.reasons)
        if bad:
            rows = [r for i, r in enumerate(rows) if i not in bad]
            rejected.count = len(bad)
            still_bad: set[int] = set()
            table = self._table(ds, rows, still_bad, rejected.reasons) if rows else None
            if still_bad:
                rejected.count += len(rows)
                table = None
        if table is None:
            return [], rejected
        # The partition is the UTC date of the time column (vectorised); no time means today.
        when = table.column(ds.time_column)
        if when.null_count:
            when = pc.fill_null(
                when, pa.scalar(datetime.now(UTC), ds.schema.field(ds.time_column).type)
            )
        days = pc.cast(when, pa.date32())
        uniq = pc.unique(days).to_pylist()
        if len(uniq) == 1:
            return [Prepared(ds.name, uniq[0].isoformat(), table)], rejected
        parts = [Prepared(ds.name, d.isoformat(), table.filter(pc.equal(days, d))) for d in uniq]
        return parts, rejected

    def _warn_unknown_keys(self, ds: Dataset, row: Mapping[str, Any]) -> None:
        for key in row.keys() - set(ds.schema.names) - {OMIT_KEY}:
            if (ds.name, key) not in _warned_keys:
                _warned_keys.add((ds.name, key))
                log.warning("row key is not a column; ignored", dataset=ds.name, key=key)

    def _table(
        self,
        ds: Dataset,
        rows: Sequence[Mapping[str, Any]],
        bad: set[int],
        reasons: dict[str, str],
    ) -> pa.Table | None:
        n = len(rows)
        omit: list[bool] | None = None
        if not self.store_content:
            omit = [True] * n
        elif any(r.get(OMIT_KEY) for r in rows):
            omit = [bool(r.get(OMIT_KEY)) for r in rows]
        scrub = SCRUB_COLUMNS.get(ds.name, ())
        arrays = []
        for f in ds.schema:
            name = f.name
            if name == "writer":
                arrays.append(pa.array([self.writer_id] * n, f.type))
                continue
            if name == "schema_version":
                arrays.append(pa.array([SCHEMA_VERSION] * n, f.type))
                continue
            if name == "content_omitted" and omit is not None:
                values: list[Any] = [
                    o or bool(r.get(name)) for o, r in zip(omit, rows, strict=True)
                ]
            elif name in ds.content_columns:
                if omit is None:
                    values = [as_text(r.get(name)) for r in rows]
                else:
                    values = [
                        None if o else as_text(r.get(name)) for o, r in zip(omit, rows, strict=True)
                    ]
            elif name in scrub:
                values = [as_text(r.get(name)) for r in rows]
            else:
                values = [r.get(name) for r in rows]
            arr = _convert(f, values, bad, reasons)
            if arr is None:
                continue
            if name in ds.content_columns or name in scrub:
                arr = self.redactor.redact_array(arr, json=name in JSON_COLUMNS)
            arrays.append(arr)
        if bad:
            return None
        return pa.Table.from_arrays(arrays, schema=ds.schema)


_CONVERSION_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)


def _convert(
    f: pa.Field, values: list[Any], bad: set[int], reasons: dict[str, str]
) -> pa.Array | None:
    """The column as an Arrow array, or None after adding the rows that do not convert to `bad`."""
    try:
        return pa.array(values, f.type)
    except _CONVERSION_ERRORS:
        pass
    for i, v in enumerate(values):
        try:
            pa.array([v], f.type)
        except _CONVERSION_ERRORS:
            bad.add(i)
            reasons[f.name] = f"{type(v).__name__} is not {f.type}"
    return None
