"""`<data_dir>/catalog.duckdb`: the lake's views in a file, so `duckdb <data_dir>/catalog.duckdb` just works.

The catalog holds no data - only views over the Parquet segments (absolute paths, globbed at
query time, applying the compaction manifest) and `labels_latest`, plus a small
`lake_info` table. Its own schema evolves through numbered migrations recorded in
`_migrations` and applied on open; the views are recreated on every refresh because they
follow the lake's schema version and location.

DuckDB lets one process at a time open a database file for writing. The proxy therefore
refreshes the catalog once at start-up and closes it at once; several processes starting
together (`serve --workers N`) wait their turn, retrying while the file is locked. While a
user holds the catalog open, a refresh gives up after `lock_timeout_s` (the previous views
keep working: they glob at query time).

The first catalog is built under a name of its own and then linked into place, so nobody
ever opens a half-made one: DuckDB creates a new database file before it locks it, and a
second process opening the file in that moment read an empty header and failed with "not a
valid DuckDB database file" (seen once in a test run of four processes starting together).
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from proxy.errors import LakeError
from proxy.lake.reader import check_segments, create_views
from proxy.lake.schema import SCHEMA_VERSION

CATALOG_NAME = "catalog.duckdb"


@dataclass(frozen=True)
class Migration:
    """One numbered, never-edited change to the catalog's own tables."""

    id: int
    name: str
    apply: Callable[[duckdb.DuckDBPyConnection], None]


def _m001_lake_info(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE TABLE lake_info (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO lake_info VALUES ('created_at', ?)", [datetime.now(UTC).isoformat()])


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "lake_info", _m001_lake_info),)


def catalog_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / CATALOG_NAME


def apply_migrations(
    con: duckdb.DuckDBPyConnection, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Apply the migrations not yet recorded in `_migrations`, each in its own transaction."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS _migrations "
        "(id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
    )
    rows = con.execute("SELECT id FROM _migrations").fetchall()
    done = {int(r[0]) for r in rows}
    known = max((m.id for m in migrations), default=0)
    if done and max(done) > known:
        raise LakeError(
            f"catalog.duckdb has migration {max(done)}, this shadoweval knows up to {known}: "
            "upgrade shadoweval"
        )
    applied = []
    for m in sorted(migrations, key=lambda m: m.id):
        if m.id in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            m.apply(con)
            con.execute("INSERT INTO _migrations VALUES (?, ?, now())", [m.id, m.name])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        applied.append(m.id)
    return applied


def _busy(exc: duckdb.Error) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflict" in text


def refresh(
    data_dir: str | Path,
    *,
    lock_timeout_s: float = 10.0,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> Path:
    """Create or update `catalog.duckdb`: migrations, then every view; returns its path."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    stuck = check_segments(data_dir)
    path = catalog_path(data_dir)
    if not path.exists() and _create(path, data_dir, stuck, migrations):
        return path
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.02
    while True:
        try:
            _refresh_once(path, data_dir, stuck, migrations)
            return path
        except (duckdb.IOException, duckdb.TransactionException) as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise LakeError(f"cannot update {path}: {exc}") from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


def _create(
    path: Path,
    data_dir: Path,
    stuck: dict[str, list[Path]],
    migrations: Sequence[Migration],
) -> bool:
    """Build a new catalog aside and link it in as `path`; False if another process was first
    (its catalog then stands, and the caller refreshes it as usual)."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        _refresh_once(aside, data_dir, stuck, migrations)
        os.link(aside, path)  # atomic, and never replaces a catalog someone else made
        return True
    except OSError:  # another process linked its catalog first (FileExistsError), or a file
        return False  # system without hard links: the caller refreshes or makes it in place
    except duckdb.Error as exc:
        raise LakeError(f"cannot create {path}: {exc}") from None
    finally:
        aside.unlink(missing_ok=True)
        aside.with_name(aside.name + ".wal").unlink(missing_ok=True)


def _refresh_once(
    path: Path,
    data_dir: Path,
    stuck: dict[str, list[Path]],
    migrations: Sequence[Migration],
) -> None:
    con = duckdb.connect(str(path))
    try:
        apply_migrations(con, migrations)
        con.execute("BEGIN TRANSACTION")
        try:
            create_views(con, data_dir, stuck)
            info = {
                "schema_version": str(SCHEMA_VERSION),
                "data_dir": str(data_dir.resolve()),
                "refreshed_at": datetime.now(UTC).isoformat(),
                "refreshed_by": f"{socket.gethostname()}:{os.getpid()}",
            }
            if con.execute("SELECT count(*) FROM _migrations WHERE id = 1").fetchone() == (1,):
                for k, v in info.items():
                    con.execute("INSERT OR REPLACE INTO lake_info VALUES (?, ?)", [k, v])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()


def connect(data_dir: str | Path, *, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the catalog; hold it briefly - a proxy starting meanwhile waits for the file lock."""
    path = catalog_path(data_dir)
    if not path.exists():
        raise LakeError(f"no catalog at {path}; start the proxy or run `shadoweval compact` once")
    return duckdb.connect(str(path), read_only=read_only)
