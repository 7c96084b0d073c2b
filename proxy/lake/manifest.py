"""Which segments of a dataset are visible: the per-dataset manifest that makes compaction atomic.

A plain glob cannot swap many small segments for one merged segment atomically: a reader
listing the directory mid-swap would see both (duplicates) or neither (a gap). So
visibility has one more input, `<data_dir>/<dataset>/_manifest.jsonl`, replaced in one
atomic rename:

- a segment written by a writer (any name not starting with `compact-`) is visible unless
  the manifest marks it `superseded`;
- a merged segment (`compact-...`) is visible only while the manifest marks it `live`.

Compaction writes the merged segment first (invisible), then replaces the manifest (merged
`live`, inputs `superseded`) - the one atomic switch - and deletes the inputs only after a
grace period, so a query that listed them before the switch can still read them. Every
reader (the views of `reader.py`, `catalog.duckdb`) applies these rules in SQL, reading the
manifest once in the same query as the segments. A missing manifest means "nothing compacted".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from proxy.lake.writer import COMPACTED_PREFIX

MANIFEST_NAME = "_manifest.jsonl"
LOCK_NAME = ".maintenance.lock"
LIVE = "live"
SUPERSEDED = "superseded"


@dataclass
class Entry:
    """One manifest line: a segment (path relative to the dataset dir), its state and since when."""

    file: str
    state: str
    since: float


def manifest_path(data_dir: Path, ds_name: str) -> Path:
    return Path(data_dir) / ds_name / MANIFEST_NAME


def read_manifest(path: Path) -> dict[str, Entry]:
    """The entries by relative file name; an absent manifest is an empty one."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    out: dict[str, Entry] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        d = orjson.loads(line)
        out[d["file"]] = Entry(d["file"], d["state"], float(d.get("since", 0.0)))
    return out


def write_manifest(path: Path, entries: dict[str, Entry]) -> None:
    """Replace the manifest atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    body = b"".join(
        orjson.dumps({"file": e.file, "state": e.state, "since": e.since}) + b"\n"
        for e in sorted(entries.values(), key=lambda e: e.file)
    )
    with open(tmp, "wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def maintenance_lock(
    data_dir: Path, ds_name: str, *, timeout_s: float | None = None
) -> Iterator[bool]:
    """Hold the dataset's maintenance lock (one compactor at a time on a host); yields acquired.

    `timeout_s=None` waits as long as needed; `0` tries once. The lock is an advisory
    `flock`, so it serialises processes on one host; on shared network storage run one
    compactor per lake.
    """
    lock_path = Path(data_dir) / ds_name / LOCK_NAME
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    acquired = False
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                acquired = True
                break
            except BlockingIOError:
                if deadline is None or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        yield acquired
    finally:
        if acquired:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def visible_sql(scan: str, dataset_root: Path) -> str:
    """`scan` (a SELECT with a `filename` column) restricted to the segments the manifest shows.

    The manifest is scanned once per query and joined to the segments: each rule must see
    the same version of it. (Two reads, one per rule, let a switch fall between them and
    show inputs and merged segment both - or neither.)
    """
    root = str(Path(dataset_root).resolve())
    manifest = (
        "SELECT NULL::VARCHAR AS file, NULL::VARCHAR AS state WHERE false UNION ALL BY NAME "
        f"SELECT * FROM read_json({_sql_str(os.path.join(root, MANIFEST_NAME))}, "
        "allow_empty = true, format = 'newline_delimited', "
        "columns = {'file': 'VARCHAR', 'state': 'VARCHAR'})"
    )
    # A file has one line (`write_manifest` writes a dict); grouping only makes sure the
    # join can never repeat a segment's rows.
    states = (
        f"SELECT {_sql_str(root + os.sep)} || file AS path, max(state) AS state "
        f"FROM ({manifest}) WHERE file IS NOT NULL GROUP BY file"
    )
    return (
        f"SELECT s.* FROM ({scan}) AS s LEFT JOIN ({states}) AS m ON s.filename = m.path "
        f"WHERE CASE WHEN starts_with(parse_filename(s.filename), '{COMPACTED_PREFIX}') "
        f"THEN m.state IS NOT DISTINCT FROM '{LIVE}' "
        f"ELSE m.state IS DISTINCT FROM '{SUPERSEDED}' END"
    )
