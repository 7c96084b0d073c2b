"""Merge small segments per dataset and day, and drop partitions past retention, atomically.

A proxy writes a segment every flush, so a day of traffic makes thousands of small files;
queries get slower with every file. Compaction merges closed segments (every `.parquet`
name is closed: writers rename complete files into place) older than `older_than_s` into
`compact-<id>.parquet` segments of up to `TARGET_BYTES`, per dataset and date partition.

The guarantee, for every reader that goes through the lake's views (`reader.connect`,
`catalog.duckdb`, `shadoweval sql`): while compaction runs, each query sees each row exactly
once - no duplicates, no gaps. How (see `manifest.py`): merged segments are written first
and stay invisible until the manifest says `live`; one atomic rename of the manifest then
makes them live and their inputs `superseded` (invisible) together. DuckDB lists the files
when it plans a query and reads the manifest when it starts running it, so the switch waits
`settle_s` (2 s) after the last merged segment appeared: a query that listed the files
before that segment existed has read the old manifest long before the switch. The only
assumption is that a query starts running within `settle_s` of being planned (DuckDB takes
milliseconds).

Deleting files is the one thing a reader can notice: DuckDB opens each listed file while
the query runs, so a query in flight when a maintenance pass deletes a file it listed fails
with "No such file" - an error, never a wrong answer; run it again (`shadoweval sql` retries
by itself, see `reader.retry_vanished`). Superseded files are deleted only `grace_s`
(10 min) after the switch, in a later pass, which also gives engines that cache file
listings time to notice. Engines that glob the Parquet files without the manifest (Spark,
Trino, a bare `read_parquet`) see inputs and merged segments side by side during that grace
period; compact while they are idle, or give them the live file list.

Retention (`retention_days`) marks every segment of a partition whose rows are all older
than that many days `superseded`; the same grace period then deletes them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from proxy.ids import new_id
from proxy.lake.manifest import (
    LIVE,
    SUPERSEDED,
    Entry,
    maintenance_lock,
    manifest_path,
    read_manifest,
    write_manifest,
)
from proxy.lake.reader import STRAY_TMP_AGE_S, check_segments
from proxy.lake.schema import DATASETS, SCHEMA_VERSION, Dataset
from proxy.lake.writer import COMPACTED_PREFIX, TMP_SUFFIX

log = structlog.get_logger("shadoweval.lake")

DELETE_GRACE_S = 600.0
SETTLE_S = 2.0
TARGET_BYTES = 64 * 1024 * 1024
ROW_GROUP_ROWS = 128_000


@dataclass
class CompactionReport:
    """What one pass did, for logs and the `shadoweval compact` summary."""

    merged_segments: int = 0
    input_segments: int = 0
    rows: int = 0
    deleted_files: int = 0
    expired_partitions: list[str] = field(default_factory=list)
    removed_temporary: int = 0
    skipped_locked: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.merged_segments
            or self.deleted_files
            or self.expired_partitions
            or self.removed_temporary
        )

    def summary(self) -> dict[str, Any]:
        return {
            "merged_segments": self.merged_segments,
            "input_segments": self.input_segments,
            "rows": self.rows,
            "deleted_files": self.deleted_files,
            "expired_partitions": len(self.expired_partitions),
            "removed_temporary": self.removed_temporary,
            "skipped_locked": self.skipped_locked,
        }


def compact(
    data_dir: str | Path,
    *,
    older_than_s: float = 3600.0,
    retention_days: int | None = None,
    grace_s: float = DELETE_GRACE_S,
    settle_s: float = SETTLE_S,
    now: float | None = None,
    lock_timeout_s: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    datasets: Iterable[str] | None = None,
) -> CompactionReport:
    """One maintenance pass over the lake: delete what outlived its grace, expire, merge."""
    data_dir = Path(data_dir)
    now = time.time() if now is None else now
    stop = should_stop or (lambda: False)
    report = CompactionReport()
    check_segments(data_dir, now)
    for name in datasets or DATASETS:
        ds = DATASETS[name]
        if not (data_dir / ds.name).is_dir() or stop():
            continue
        with maintenance_lock(data_dir, ds.name, timeout_s=lock_timeout_s) as acquired:
            if not acquired:
                report.skipped_locked.append(ds.name)
                continue
            _Pass(data_dir, ds, now, grace_s, report, stop).run(
                older_than_s, retention_days, settle_s
            )
    return report


def expired(day: str, retention_days: int, now: float) -> bool:
    """True when every row of partition `day` is older than `retention_days` days."""
    today = datetime.fromtimestamp(now, UTC).date()
    return date.fromisoformat(day) + timedelta(days=retention_days + 1) <= today


class _Pass:
    """Maintenance of one dataset while holding its lock."""

    def __init__(
        self,
        data_dir: Path,
        ds: Dataset,
        now: float,
        grace_s: float,
        report: CompactionReport,
        stop: Callable[[], bool],
    ) -> None:
        self.root = data_dir / ds.name
        self.ds = ds
        self.now = now
        self.grace_s = grace_s
        self.report = report
        self.stop = stop
        self.mpath = manifest_path(data_dir, ds.name)
        self.entries = read_manifest(self.mpath)
        # Merged segments written in this pass (invisible until `_switch`) and their inputs.
        self.merged: list[tuple[Path, list[Path], int]] = []

    def run(self, older_than_s: float, retention_days: int | None, settle_s: float) -> None:
        self._delete_superseded()
        parts = sorted(p for p in self.root.glob("date=*") if p.is_dir())
        for part in parts:
            self._clean_partition(part)
        for part in parts:
            if self.stop():
                break
            day = part.name.removeprefix("date=")
            try:
                is_old = retention_days is not None and expired(day, retention_days, self.now)
            except ValueError:
                continue  # not a date partition; readers quarantine its files
            if is_old:
                self._expire(part)
                if not any(part.iterdir()):
                    with contextlib.suppress(OSError):  # a late row's segment just arrived
                        part.rmdir()
            else:
                self._merge_partition(part, older_than_s)
        if self.merged:
            time.sleep(settle_s)
            self._switch()

    def _rel(self, path: Path) -> str:
        return f"{path.parent.name}/{path.name}"

    def _visible(self, path: Path) -> bool:
        entry = self.entries.get(self._rel(path))
        if path.name.startswith(COMPACTED_PREFIX):
            return entry is not None and entry.state == LIVE
        return entry is None or entry.state != SUPERSEDED

    def _delete_superseded(self) -> None:
        # Delete the file before forgetting its entry: a crash in between leaves an entry
        # for a missing file (harmless), never a visible duplicate.
        gone = []
        for e in self.entries.values():
            if e.state == SUPERSEDED and self.now - e.since >= self.grace_s:
                try:
                    (self.root / e.file).unlink()
                    self.report.deleted_files += 1
                except FileNotFoundError:
                    pass
                gone.append(e.file)
        if gone:
            for f in gone:
                del self.entries[f]
            write_manifest(self.mpath, self.entries)

    def _clean_partition(self, part: Path) -> None:
        """Remove temporary files left by dead writers and merged segments never made live."""
        for path in part.iterdir():
            try:
                age = self.now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            stray_tmp = path.name.endswith(TMP_SUFFIX) and age > STRAY_TMP_AGE_S
            # We hold the lock, so a compact- segment absent from the manifest is from a
            # pass that died before its switch.
            orphan = path.name.startswith(COMPACTED_PREFIX) and self._rel(path) not in self.entries
            if stray_tmp or orphan:
                path.unlink(missing_ok=True)
                self.report.removed_temporary += 1
                log.info("removed leftover file", path=str(path))

    def _expire(self, part: Path) -> None:
        marked = 0
        for path in part.glob("*.parquet"):
            if self._visible(path):
                rel = self._rel(path)
                self.entries[rel] = Entry(rel, SUPERSEDED, self.now)
                marked += 1
        if marked:
            write_manifest(self.mpath, self.entries)
            self.report.expired_partitions.append(f"{self.ds.name}/{part.name}")

    def _merge_partition(self, part: Path, older_than_s: float) -> None:
        candidates = []
        for path in part.glob("*.parquet"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            small = st.st_size < TARGET_BYTES // 2
            if small and self.now - st.st_mtime >= older_than_s and self._visible(path):
                candidates.append((st.st_mtime, path.name, path, st.st_size))
        candidates.sort()
        group: list[Path] = []
        size = 0
        for _, _, path, nbytes in candidates:
            if group and size + nbytes > TARGET_BYTES:
                self._merge(part, group)
                group, size = [], 0
            group.append(path)
            size += nbytes
        self._merge(part, group)

    def _merge(self, part: Path, group: list[Path]) -> None:
        if len(group) < 2 or self.stop():
            return
        try:
            merged, rows = _write_merged(part, group)
        except (OSError, pa.ArrowException) as exc:
            log.warning(
                "segments not merged", partition=str(part), segments=len(group), error=str(exc)
            )
            return
        self.merged.append((merged, group, rows))

    def _switch(self) -> None:
        """Make this pass's merged segments live and their inputs superseded: one rename."""
        for merged, group, rows in self.merged:
            rel = self._rel(merged)
            self.entries[rel] = Entry(rel, LIVE, self.now)
            for path in group:
                self.entries[self._rel(path)] = Entry(self._rel(path), SUPERSEDED, time.time())
            self.report.merged_segments += 1
            self.report.input_segments += len(group)
            self.report.rows += rows
        write_manifest(self.mpath, self.entries)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Give a table every column of the unified schema (missing ones as nulls), in order."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _write_merged(part: Path, group: list[Path]) -> tuple[Path, int]:
    """Write the group's rows as one new (not yet visible) segment; return it and its rows."""
    files = [pq.ParquetFile(p) for p in group]
    try:
        schema = pa.unify_schemas([f.schema_arrow.remove_metadata() for f in files])
        expected = sum(f.metadata.num_rows for f in files)
        versions = [
            int((f.schema_arrow.metadata or {}).get(b"shadoweval.schema_version", b"0"))
            for f in files
        ]
        schema = schema.with_metadata(
            {b"shadoweval.schema_version": str(max([SCHEMA_VERSION, *versions])).encode()}
        )
        final = part / f"{COMPACTED_PREFIX}{new_id()}.parquet"
        tmp = part / f".{final.name}{TMP_SUFFIX}"
        written = 0
        with pq.ParquetWriter(tmp, schema, compression="zstd") as out:
            pending: list[pa.Table] = []
            buffered = 0
            for f in files:
                t = _conform(f.read(), schema)
                pending.append(t)
                buffered += t.num_rows
                if buffered >= ROW_GROUP_ROWS:
                    out.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    written += buffered
                    pending, buffered = [], 0
            if pending:
                out.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                written += buffered
    finally:
        for f in files:
            f.close()
    if written != expected or pq.read_metadata(tmp).num_rows != expected:
        tmp.unlink(missing_ok=True)
        raise OSError(f"merged segment has {written} rows, inputs have {expected}")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final, expected
