"""Write rows into the lake as complete, atomically renamed Parquet segments.

Layout: `<data_dir>/<dataset>/date=YYYY-MM-DD/<writer>-<seq>.parquet`. A segment is
written as `.<name>.tmp` in the same directory and renamed into place, so a reader
either sees the whole file or nothing. Every writer (a proxy process, a CLI command)
names its own segments, so many can write into one lake.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from proxy.ids import new_id
from proxy.lake.schema import SCHEMA_VERSION, Dataset, dataset

TMP_SUFFIX = ".tmp"
# Merged segments are named `compact-...` (see manifest.py); a writer id must not look like one.
COMPACTED_PREFIX = "compact-"
_WRITER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def default_writer_id(kind: str = "w") -> str:
    """A writer name unique across hosts and processes: kind-host-pid-random."""
    host = socket.gethostname().split(".")[0].replace("-", "")[:16] or "host"
    return f"{kind}-{host}-{os.getpid()}-{new_id()[-6:].lower()}"


def partition_dir(data_dir: Path, ds: Dataset, day: str) -> Path:
    return Path(data_dir) / ds.name / f"date={day}"


def check_writer_id(writer_id: str) -> str:
    """A writer id names files: short, no path characters, never a merged segment's prefix."""
    if not _WRITER_ID.match(writer_id) or writer_id.startswith(COMPACTED_PREFIX):
        raise ValueError(
            f"invalid writer id {writer_id!r}: use letters, digits, '_', '.', '-' "
            f"(at most 128) and do not start with {COMPACTED_PREFIX!r}"
        )
    return writer_id


def _day(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d")
    return datetime.now(UTC).strftime("%Y-%m-%d")


def write_table_atomic(table: pa.Table, final_path: Path, compression: str = "zstd") -> Path:
    """Write `table` to `final_path` via a temporary file and an atomic rename."""
    tmp = final_path.with_name(f".{final_path.name}{TMP_SUFFIX}")
    meta = dict(table.schema.metadata or {})
    meta[b"shadoweval.schema_version"] = str(SCHEMA_VERSION).encode()
    table = table.replace_schema_metadata(meta)
    for attempt in (1, 2):
        final_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            pq.write_table(table, tmp, compression=compression)
            break
        except FileNotFoundError:
            # Retention removed the (empty) partition directory in between: make it again.
            if attempt == 2:
                raise
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final_path)
    return final_path


class SegmentWriter:
    """Turns batches of row dicts into segments; thread-safe; one per writing process."""

    def __init__(
        self, data_dir: str | Path, writer_id: str | None = None, compression: str = "zstd"
    ) -> None:
        self.data_dir = Path(data_dir)
        # The proxy's recorder writes `snappy` (about twice as fast); compaction rewrites
        # segments with `zstd` (about a third smaller).
        self.compression = compression
        self.writer_id = check_writer_id(writer_id or default_writer_id())
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def _next_name(self) -> str:
        with self._lock:
            seq = next(self._seq)
        # A time-ordered id keeps names unique even if a writer id is reused after a restart.
        return f"{self.writer_id}-{seq:06d}-{new_id()}.parquet"

    def to_table(self, ds: Dataset, rows: list[Mapping[str, Any]]) -> pa.Table:
        cols: dict[str, list[Any]] = {}
        for field in ds.schema:
            if field.name == "writer":
                cols["writer"] = [self.writer_id] * len(rows)
            elif field.name == "schema_version":
                cols["schema_version"] = [SCHEMA_VERSION] * len(rows)
            else:
                cols[field.name] = [r.get(field.name) for r in rows]
        return pa.Table.from_pydict(cols, schema=ds.schema)

    def write(self, dataset_name: str, rows: Iterable[Mapping[str, Any]]) -> list[Path]:
        """Write rows (dicts keyed by column name; missing keys are null) into segments.

        Rows are split by the UTC date of the dataset's time column; one segment per day.
        """
        ds = dataset(dataset_name)
        by_day: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in rows:
            by_day[_day(r.get(ds.time_column))].append(r)
        return [
            self.write_table(ds, day, self.to_table(ds, day_rows))
            for day, day_rows in sorted(by_day.items())
        ]

    def write_table(self, ds: Dataset, day: str, table: pa.Table) -> Path:
        """Write one prepared table as a new segment of `ds` in partition `day` (YYYY-MM-DD)."""
        path = partition_dir(self.data_dir, ds, day) / self._next_name()
        return write_table_atomic(table, path, self.compression)


def write_rows(
    data_dir: str | Path, dataset_name: str, rows: Iterable[Mapping[str, Any]], kind: str = "cli"
) -> list[Path]:
    """One-shot write for offline tools (label import, eval set build, replay)."""
    return SegmentWriter(data_dir, default_writer_id(kind)).write(dataset_name, rows)
