"""`shadoweval sql` queries the lake with DuckDB; `shadoweval compact` merges segments and expires old days.

`sql` opens an in-memory DuckDB with the lake's views (`requests`, `responses`, `labels`,
`eval_sets`, `labels_latest`), so it never locks anything and works while proxies write.
With a QUERY it prints one result; without one it reads statements (ended by `;`) from the
terminal or stdin until EOF or `.quit`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import duckdb
import orjson
from rich.console import Console
from rich.table import Table

from proxy.config import StorageSettings
from proxy.errors import InputError, LakeError
from proxy.lake import catalog
from proxy.lake.compaction import DELETE_GRACE_S, compact
from proxy.lake.reader import connect, retry_vanished
from proxy.lake.schema import DATASETS

VIEWS = (*DATASETS, "labels_latest")


def _lake(path: Path) -> Path:
    if not path.is_dir():
        raise InputError(f"no lake at {path}: the directory does not exist")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return orjson.dumps(value, default=_json_default).decode()
    return str(value)


def print_result(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, out: TextIO
) -> None:
    """Print a result as a rich table, CSV (NULL as empty) or a JSON array of objects."""
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(columns)
        w.writerows(["" if v is None else _cell(v) for v in r] for r in rows)
    elif fmt == "json":
        data = [dict(zip(columns, r, strict=True)) for r in rows]
        out.write(orjson.dumps(data, default=_json_default, option=orjson.OPT_INDENT_2).decode())
        out.write("\n")
    else:
        table = Table(show_header=True, header_style="bold")
        for c in columns:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*("[dim]NULL[/dim]" if v is None else _cell(v) for v in r))
        Console(file=out, soft_wrap=False).print(table)
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=out)


def run_query(con: duckdb.DuckDBPyConnection, query: str, fmt: str, out: TextIO) -> None:
    """Run one statement and print its result; a DuckDB error becomes an InputError."""

    def execute() -> tuple[list[str], list[Any]] | None:
        cur = con.execute(query)
        if cur.description is None:
            return None
        return [d[0] for d in cur.description], cur.fetchall()

    try:
        result = retry_vanished(execute)
    except duckdb.Error as exc:
        raise InputError(str(exc).strip().splitlines()[0]) from None
    if result is not None:
        print_result(result[0], result[1], fmt, out)


def interactive(con: duckdb.DuckDBPyConnection, fmt: str, inp: TextIO, out: TextIO) -> None:
    """Read statements ended by `;` until EOF or `.quit`; errors are printed, not fatal."""
    tty = inp.isatty()
    if tty:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        print(f"Views: {', '.join(VIEWS)}. End statements with ';'. .quit to leave.", file=out)
    buf: list[str] = []

    def run(text: str) -> None:
        try:
            run_query(con, text, fmt, out)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)

    while True:
        if tty:
            try:
                line = input("sql> " if not buf else "...> ")
            except EOFError:
                break
        else:
            line = inp.readline()
            if line == "":
                break
        stripped = line.strip()
        if not buf and stripped in (".quit", ".exit", "\\q"):
            break
        if not buf and stripped == ".tables":
            print("\n".join(VIEWS), file=out)
            continue
        if not stripped and not buf:
            continue
        buf.append(line.rstrip("\n"))
        if stripped.endswith(";"):
            run("\n".join(buf))
            buf = []
    if "".join(buf).strip():
        run("\n".join(buf))


def _run_sql(args: argparse.Namespace) -> int:
    con = connect(_lake(args.data))
    try:
        if args.query is not None:
            run_query(con, args.query, args.format, sys.stdout)
        else:
            interactive(con, args.format, sys.stdin, sys.stdout)
    finally:
        con.close()
    return 0


def _run_compact(args: argparse.Namespace) -> int:
    data = _lake(args.data)
    if args.older_than < 0:
        raise InputError("--older-than must be >= 0")
    if args.retention_days is not None and args.retention_days < 1:
        raise InputError("--retention-days must be >= 1")
    report = compact(data, older_than_s=args.older_than, retention_days=args.retention_days)
    with contextlib.suppress(LakeError):
        catalog.refresh(data, lock_timeout_s=2.0)
    print(
        f"merged {report.input_segments} segments into {report.merged_segments} "
        f"({report.rows} rows); deleted {report.deleted_files} superseded files"
    )
    if report.expired_partitions:
        print(f"expired partitions: {', '.join(report.expired_partitions)}")
    if report.skipped_locked:
        print(f"skipped (another compaction is running): {', '.join(report.skipped_locked)}")
    if report.merged_segments or report.expired_partitions:
        print(
            f"superseded files stay on disk (invisible to queries) for {DELETE_GRACE_S:.0f} s "
            "and are deleted by the next compaction after that"
        )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sql",
        help="query the lake with DuckDB SQL",
        description="Query the lake: views requests, responses, labels, eval_sets, labels_latest.",
    )
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="the lake directory")
    p.add_argument("query", nargs="?", help="one SQL statement; omit for an interactive prompt")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=_run_sql)

    c = sub.add_parser(
        "compact",
        help="merge small segments and remove partitions past retention",
        description="Merge closed small segments per dataset and day; apply retention.",
    )
    c.add_argument("--data", type=Path, required=True, metavar="DIR", help="the lake directory")
    c.add_argument(
        "--older-than",
        type=float,
        default=StorageSettings.model_fields["compact_after_s"].default,
        metavar="SECONDS",
        help="merge only segments at least this old (default: %(default)s)",
    )
    c.add_argument(
        "--retention-days",
        type=int,
        default=None,
        metavar="N",
        help="remove date partitions whose rows are all older than N days",
    )
    c.set_defaults(func=_run_compact)
