"""Labels in and out of the lake as files: CSV and JSONL import (all or nothing) and export.

Import reads the whole file first and checks every line (`proxy/lake/labels.py` has the
rules per kind); one bad line rejects the file, and the error lists every bad line by its
line number. Columns (CSV header) or keys (JSONL) are `request_id, kind, target, value,
labeller, source`; `label_id` and `created_at` may be present too (a file written by
`export --history`), and are then kept, so history moves between lakes; a label id that
is already in the lake rejects the line (the file was imported before). `source`
defaults to `human`. In CSV a value is a cell of text (`proxy.lake.label_values.parse_cell`);
in JSONL it is any JSON value.

Export writes the newest label per (request, kind, target), or every label with
`history=True`, with `label_id` and `created_at`, in a form import reads back unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from proxy.errors import InputError
from proxy.lake.label_values import parse_cell
from proxy.lake.labels import FIELDS, HISTORY_FIELDS, LabelError, Validation, validate
from proxy.lake.reader import connect
from proxy.lake.writer import write_rows

Format = Literal["csv", "jsonl"]
EXPORT_COLUMNS = ("label_id", *FIELDS, "created_at")
REQUIRED = ("request_id", "kind", "value")
# The error message lists at most this many bad lines; the count says how many there were.
MAX_LISTED = 200


def file_format(path: Path) -> Format:
    """CSV for `.csv`; JSONL for `.jsonl`, `.ndjson` and `.json` (one object per line)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise InputError(f"{path}: unknown label file type {suffix or '(none)'!r}; use .csv or .jsonl")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"no such label file: {path}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_csv(text: str) -> tuple[list[tuple[int, Any]], list[LabelError]]:
    """Numbered rows of a CSV label file (line numbers count the header as line 1)."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [LabelError(1, "the file is empty: expected a header row")]
    except csv.Error as exc:
        return [], [LabelError(1, f"unreadable header: {exc}")]
    allowed = FIELDS + HISTORY_FIELDS
    problems = []
    if unknown := [h for h in header if h not in allowed]:
        problems.append(f"unknown column(s) {', '.join(map(repr, unknown))}")
    if missing := [c for c in REQUIRED if c not in header]:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if len(set(header)) != len(header):
        problems.append("a column appears twice")
    if problems:
        return [], [LabelError(1, "; ".join(problems) + f" (columns: {', '.join(allowed)})")]
    items: list[tuple[int, Any]] = []
    errors: list[LabelError] = []
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(LabelError(line, f"malformed CSV: {exc}"))
            break
        if not any(c.strip() for c in cells):
            pass  # blank line
        elif len(cells) != len(header):
            errors.append(LabelError(line, f"expected {len(header)} fields, got {len(cells)}"))
        else:
            items.append((line, {h: c for h, c in zip(header, cells, strict=True) if c != ""}))
        line = reader.line_num + 1
    return items, errors


def read_jsonl(text: str) -> tuple[list[tuple[int, Any]], list[LabelError]]:
    """Numbered objects of a JSONL label file; blank lines are skipped."""
    items: list[tuple[int, Any]] = []
    errors: list[LabelError] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except ValueError as exc:
            errors.append(LabelError(number, f"not valid JSON: {exc}"))
    return items, errors


def check_file(path: str | Path, data_dir: str | Path) -> Validation:
    """Read and check a whole label file against the lake; nothing is written."""
    path = Path(path)
    fmt = file_format(path)
    text = _read_text(path)
    items, read_errors = read_csv(text) if fmt == "csv" else read_jsonl(text)
    con = connect(data_dir)
    try:
        checked = validate(items, con, from_text=(fmt == "csv"), allow_history=True)
    finally:
        con.close()
    if read_errors:
        errors = sorted([*read_errors, *checked.errors], key=lambda e: e.item)
        return Validation([], errors)
    if not items:
        return Validation([], [LabelError(1, "the file has no labels")])
    return checked


def rejection_message(path: Path, errors: list[LabelError]) -> str:
    """One line per bad line, for the user; at most MAX_LISTED."""
    lines = [f"{path}: {len(errors)} bad line(s); nothing was imported"]
    lines += [f"  line {e.item}: {e.reason}" for e in errors[:MAX_LISTED]]
    if len(errors) > MAX_LISTED:
        lines.append(f"  ... and {len(errors) - MAX_LISTED} more")
    return "\n".join(lines)


def import_labels(path: str | Path, data_dir: str | Path) -> int:
    """Import a whole label file into the lake, or raise InputError listing every bad line."""
    checked = check_file(path, data_dir)
    if not checked.ok:
        raise InputError(rejection_message(Path(path), checked.errors))
    write_rows(data_dir, "labels", checked.rows, kind="labels")
    return len(checked.rows)


def _csv_value(kind: str, value_json: str) -> str:
    """The CSV cell for a stored value: bare text when import reads it back as the same value."""
    value = json.loads(value_json)
    if (
        isinstance(value, str)
        and value
        and value.strip() == value
        and parse_cell(kind, value) == value
    ):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def export_rows(data_dir: str | Path, *, history: bool = False) -> list[dict[str, Any]]:
    """Labels as dicts (value decoded), oldest first: the newest per key, or all with history."""
    view = "labels" if history else "labels_latest"
    con = connect(data_dir)
    try:
        cur = con.execute(
            f"SELECT {', '.join(EXPORT_COLUMNS)} FROM {view} ORDER BY created_at, label_id"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def write_export(rows: list[dict[str, Any]], out: IO[str], fmt: Format) -> None:
    """Write exported rows as CSV (values as cells) or JSONL (values as JSON)."""
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for r in rows:
            cells = {**r, "value": _csv_value(r["kind"], r["value"])}
            cells["created_at"] = _iso(r["created_at"])
            writer.writerow(["" if cells[c] is None else cells[c] for c in EXPORT_COLUMNS])
        return
    for r in rows:
        obj = {c: r[c] for c in EXPORT_COLUMNS if r[c] is not None}
        obj["value"] = json.loads(r["value"])
        obj["created_at"] = _iso(r["created_at"])
        out.write(json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


@contextmanager
def _open_out(out: str | Path | None) -> Iterator[IO[str]]:
    if out is None or str(out) == "-":
        yield sys.stdout
        return
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        yield fh
    tmp.replace(path)


def export_labels(
    data_dir: str | Path,
    out: str | Path | None = None,
    fmt: Format | None = None,
    *,
    history: bool = False,
) -> int:
    """Export labels to `out` (stdout when None); the format defaults from out's suffix."""
    if fmt is None:
        fmt = file_format(Path(out)) if out not in (None, "-") else "jsonl"
    rows = export_rows(data_dir, history=history)
    with _open_out(out) as fh:
        write_export(rows, fh, fmt)
    return len(rows)
