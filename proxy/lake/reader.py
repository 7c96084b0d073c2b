"""Open the lake for reading: an in-memory DuckDB with one view per dataset, plus `labels_latest`.

Readers never take a lock on the lake, so any number can query while proxies write. Each
view re-lists the segments at every query (a glob, not a snapshot taken at connect time),
applies the compaction manifest (`manifest.py`) so every row is seen exactly once, and is
typed even before a dataset has its first segment. Before the views are created, segments
are checked: a truncated or corrupt Parquet file (or one in a partition directory that is
not `date=YYYY-MM-DD`) is moved to `<data_dir>/_quarantine/` with a warning, and stray
temporary files are skipped with a warning, so no query fails on them.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from proxy.lake.manifest import visible_sql
from proxy.lake.schema import DATASETS, Dataset
from proxy.lake.writer import TMP_SUFFIX

log = structlog.get_logger("shadoweval.lake")
T = TypeVar("T")

QUARANTINE_DIR = "_quarantine"
# A temporary file older than this is left over by a writer that died mid-write.
STRAY_TMP_AGE_S = 600.0
_PARTITION = re.compile(r"^date=\d{4}-\d{2}-\d{2}$")
_DUCKDB_TYPES = {
    "string": "VARCHAR",
    "bool": "BOOLEAN",
    "double": "DOUBLE",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "timestamp[us, tz=UTC]": "TIMESTAMPTZ",
    "list<item: string>": "VARCHAR[]",
}
# Segments already found sound, by path -> (size, mtime_ns); segments never change once named.
_checked: dict[str, tuple[int, int]] = {}
_warned_stray: set[str] = set()
_checked_lock = threading.Lock()


def glob_for(data_dir: Path, ds_name: str) -> str:
    return str(Path(data_dir).resolve() / ds_name / "date=*" / "*.parquet")


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _typed_empty(ds: Dataset) -> str:
    # An empty relation with the dataset's columns, so views are typed before any segment exists.
    cols = ", ".join(f"CAST(NULL AS {_DUCKDB_TYPES[str(f.type)]}) AS {f.name}" for f in ds.schema)
    return (
        f"SELECT {cols}, CAST(NULL AS DATE) AS date, CAST(NULL AS VARCHAR) AS filename WHERE false"
    )


def dataset_source_sql(data_dir: Path, ds: Dataset, files: list[Path] | None = None) -> str:
    """A SELECT over every visible segment of a dataset, typed even when there is none.

    `files=None` globs at query time (the normal case); a list pins the segments (used
    only when a bad segment cannot be moved out of the way).
    """
    if files is None:
        source = _sql_str(glob_for(data_dir, ds.name))
    elif files:
        source = "[" + ", ".join(_sql_str(str(Path(f).resolve())) for f in files) + "]"
    else:
        return f"SELECT COLUMNS(lambda c: c <> 'filename') FROM ({_typed_empty(ds)})"
    scan = (
        f"SELECT * FROM read_parquet({source}, allow_empty = true, hive_partitioning = true, "
        "hive_types = {'date': 'DATE'}, union_by_name = true, filename = true)"
    )
    root = Path(data_dir).resolve() / ds.name
    visible = visible_sql(f"{_typed_empty(ds)} UNION ALL BY NAME {scan}", root)
    return f"SELECT COLUMNS(lambda c: c NOT IN ('empty', 'filename')) FROM ({visible})"


LABELS_LATEST_SQL = (
    "SELECT * FROM labels QUALIFY row_number() OVER ("
    "PARTITION BY request_id, kind, target ORDER BY created_at DESC, label_id DESC) = 1"
)


def _parquet_ok(path: Path) -> bool:
    """True when the file has Parquet magic at both ends and a footer that parses."""
    try:
        size = path.stat().st_size
        if size < 12:
            return False
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(-8, os.SEEK_END)
            tail = fh.read(8)
        if head != b"PAR1" or tail[4:] != b"PAR1":
            return False
        if int.from_bytes(tail[:4], "little") + 12 > size:
            return False
        pq.read_metadata(path)
        return True
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException):
        return False


def quarantine(data_dir: Path, path: Path, reason: str) -> bool:
    """Move a bad segment to `<data_dir>/_quarantine/` (same relative path); True if moved."""
    data_dir = Path(data_dir)
    try:
        rel = path.resolve().relative_to(data_dir.resolve())
    except ValueError:
        rel = Path(path.name)
    dest = data_dir / QUARANTINE_DIR / rel
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    except FileNotFoundError:
        return True  # another reader moved it first
    except OSError as exc:
        log.warning(
            "bad segment skipped but could not be moved",
            path=str(path),
            reason=reason,
            error=str(exc),
        )
        return False
    log.warning("bad segment moved to quarantine", path=str(path), to=str(dest), reason=reason)
    return True


def _partition_dirs(data_dir: Path, ds: Dataset) -> Iterable[Path]:
    root = Path(data_dir) / ds.name
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and p.name.startswith("date=")]


def check_segments(data_dir: str | Path, now: float | None = None) -> dict[str, list[Path]]:
    """Quarantine unreadable segments and warn about stray temporary files.

    Returns, per dataset, the bad segments that could not be moved (the caller must then
    pin the good ones instead of globbing).
    """
    data_dir = Path(data_dir)
    now = time.time() if now is None else now
    stuck: dict[str, list[Path]] = {}
    for ds in DATASETS.values():
        for part in _partition_dirs(data_dir, ds):
            for path in part.iterdir():
                _check_one(data_dir, ds, part, path, now, stuck)
    return stuck


def _check_one(
    data_dir: Path, ds: Dataset, part: Path, path: Path, now: float, stuck: dict[str, list[Path]]
) -> None:
    name = path.name
    if name.endswith(TMP_SUFFIX):
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            return
        key = str(path)
        if age > STRAY_TMP_AGE_S and key not in _warned_stray:
            _warned_stray.add(key)
            log.warning("stray temporary file skipped", path=key, age_s=round(age))
        return
    if not name.endswith(".parquet"):
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # removed by compaction since the listing
    key = str(path)
    sig = (st.st_size, st.st_mtime_ns)
    with _checked_lock:
        if _checked.get(key) == sig:
            return
    if not _PARTITION.match(part.name):
        reason = f"partition directory {part.name!r} is not date=YYYY-MM-DD"
    else:
        try:
            if _parquet_ok(path):
                with _checked_lock:
                    _checked[key] = sig
                return
        except FileNotFoundError:
            return
        reason = "truncated or corrupt Parquet file"
    if not quarantine(data_dir, path, reason):
        stuck.setdefault(ds.name, []).append(path)


def _pinned_files(data_dir: Path, ds: Dataset, bad: list[Path]) -> list[Path]:
    skip = {str(p) for p in bad}
    return sorted(
        p
        for part in _partition_dirs(data_dir, ds)
        if _PARTITION.match(part.name)
        for p in part.glob("*.parquet")
        if str(p) not in skip
    )


def create_views(
    con: duckdb.DuckDBPyConnection, data_dir: Path, stuck: dict[str, list[Path]] | None = None
) -> None:
    """(Re)create a view per dataset and `labels_latest` on a DuckDB connection."""
    stuck = stuck or {}
    for ds in DATASETS.values():
        files = _pinned_files(data_dir, ds, stuck[ds.name]) if stuck.get(ds.name) else None
        con.execute(
            f"CREATE OR REPLACE VIEW {ds.name} AS {dataset_source_sql(data_dir, ds, files)}"
        )
    con.execute(f"CREATE OR REPLACE VIEW labels_latest AS {LABELS_LATEST_SQL}")
    # Derived by the analysis (`shadoweval report`): one scored row per request and target.
    derived = Path(data_dir).resolve() / "comparisons"
    if any(derived.glob("eval_set=*/*.parquet")):
        con.execute(
            "CREATE OR REPLACE VIEW comparisons AS SELECT * FROM read_parquet("
            f"'{derived}/eval_set=*/*.parquet', hive_partitioning = true, union_by_name = true)"
        )


def connect(data_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views `requests`, `responses`, `labels`,
    `eval_sets`, `labels_latest`, and `comparisons` once a report has scored an eval set."""
    data_dir = Path(data_dir)
    stuck = check_segments(data_dir)
    con = duckdb.connect(":memory:")
    create_views(con, data_dir, stuck)
    return con


def is_vanished_file_error(exc: BaseException) -> bool:
    """True for DuckDB's error when a segment listed by a query was deleted before it was read."""
    return isinstance(exc, duckdb.IOException) and "No such file" in str(exc)


def retry_vanished(fn: Callable[[], T], attempts: int = 3) -> T:
    """Run a query function again when compaction deleted a segment under it (see compaction.py)."""
    for attempt in range(attempts):
        try:
            return fn()
        except duckdb.IOException as exc:
            if not is_vanished_file_error(exc) or attempt == attempts - 1:
                raise
            log.info("segment deleted during the query; running it again", error=str(exc))
    raise AssertionError("unreachable")
