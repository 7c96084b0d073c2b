"""catalog.duckdb: migrations, views a plain DuckDB process can query, refresh under contention."""

import subprocess
import sys
import textwrap
import threading
import time

import duckdb
import pytest

from proxy.errors import LakeError
from proxy.lake import catalog
from proxy.lake.catalog import MIGRATIONS, Migration, apply_migrations
from proxy.lake.writer import SegmentWriter
from tests.proxy.lake.conftest import T0, label_row, request_row, response_row


def _plain_duckdb(db: str, sql: str) -> str:
    """Run a query in a separate Python process with nothing but duckdb, as a user would."""
    code = (
        f"import duckdb; print(duckdb.connect({db!r}, read_only=True).execute({sql!r}).fetchall())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_refresh_creates_views_that_plain_duckdb_can_query(tmp_path):
    path = catalog.refresh(tmp_path)  # on an empty lake
    assert path == tmp_path / "catalog.duckdb"
    assert _plain_duckdb(str(path), "SELECT count(*) FROM requests") == "[(0,)]"
    # Segments written after the refresh show up without another refresh, even for a
    # dataset that had none when the views were made.
    w = SegmentWriter(tmp_path, "w1")
    w.write("requests", [request_row(i) for i in range(4)])
    w.write("responses", [response_row(i) for i in range(4)])
    w.write(
        "labels", [label_row("req-000001", 1, T0), label_row("req-000001", 2, T0.replace(hour=13))]
    )
    sql = (
        "SELECT count(*), sum(s.latency_ms), (SELECT value FROM labels_latest) "
        "FROM requests r JOIN responses s USING (request_id)"
    )
    assert _plain_duckdb(str(path), sql) == "[(4, 406.0, '2')]"


def test_migrations_are_recorded_and_applied_once(tmp_path):
    catalog.refresh(tmp_path)
    catalog.refresh(tmp_path)
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"))
    assert con.execute("SELECT id, name FROM _migrations").fetchall() == [(1, "lake_info")]
    info = dict(con.execute("SELECT key, value FROM lake_info").fetchall())
    assert info["schema_version"] == "1" and info["data_dir"] == str(tmp_path.resolve())

    calls = []

    def add_notes(c: duckdb.DuckDBPyConnection) -> None:
        calls.append(1)
        c.execute("CREATE TABLE notes (txt VARCHAR)")

    newer = (*MIGRATIONS, Migration(2, "notes", add_notes))
    assert apply_migrations(con, newer) == [2]
    assert apply_migrations(con, newer) == []
    assert calls == [1]
    with pytest.raises(LakeError, match="upgrade shadoweval"):
        apply_migrations(con, MIGRATIONS)  # an older shadoweval meeting a newer catalog
    con.close()


def test_failed_migration_rolls_back(tmp_path):
    con = duckdb.connect(str(tmp_path / "c.duckdb"))

    def broken(c: duckdb.DuckDBPyConnection) -> None:
        c.execute("CREATE TABLE half (x INT)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        apply_migrations(con, (*MIGRATIONS, Migration(2, "broken", broken)))
    assert con.execute("SELECT id FROM _migrations").fetchall() == [(1,)]
    assert con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'half'"
    ).fetchone() == (0,)


_REFRESH = textwrap.dedent(
    """
    import sys
    from proxy.lake import catalog
    catalog.refresh(sys.argv[1], lock_timeout_s=30)
    print("ok")
    """
)


def test_several_processes_refresh_at_once(tmp_path):
    SegmentWriter(tmp_path, "w1").write("requests", [request_row(1)])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _REFRESH, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err
    assert (
        _plain_duckdb(str(tmp_path / "catalog.duckdb"), "SELECT count(*) FROM requests") == "[(1,)]"
    )


def test_a_new_catalog_appears_whole_and_leaves_nothing_beside_it(tmp_path):
    """The first catalog is built aside and linked in: no process can open it half-made."""
    SegmentWriter(tmp_path, "w1").write("requests", [request_row(1)])
    catalog.refresh(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if "catalog" in p.name) == ["catalog.duckdb"]
    assert _plain_duckdb(str(tmp_path / "catalog.duckdb"), "SELECT count(*) FROM requests") == (
        "[(1,)]"
    )


def test_a_catalog_another_process_made_first_is_kept(tmp_path):
    catalog.refresh(tmp_path)
    with duckdb.connect(str(tmp_path / "catalog.duckdb")) as con:
        con.execute("INSERT OR REPLACE INTO lake_info VALUES ('note', 'made first')")
    # Another process that also found no catalog, and links its own in second.
    assert not catalog._create(tmp_path / "catalog.duckdb", tmp_path, {}, catalog.MIGRATIONS)
    with duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("SELECT value FROM lake_info WHERE key = 'note'").fetchone() == (
            "made first",
        )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".catalog")] == []


def test_refresh_waits_for_a_user_holding_the_catalog(tmp_path):
    catalog.refresh(tmp_path)
    db = str(tmp_path / "catalog.duckdb")
    # The user holds the catalog until told to let go (a line on stdin), however slow the
    # machine: a fixed hold could end before the first refresh tries.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({db!r}); print('held', flush=True); "
            "sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(LakeError, match="cannot update"):
        catalog.refresh(tmp_path, lock_timeout_s=0.2)

    def let_go() -> None:
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()

    threading.Timer(0.5, let_go).start()
    t0 = time.monotonic()
    catalog.refresh(tmp_path, lock_timeout_s=30)  # succeeds once the user lets go
    assert time.monotonic() - t0 >= 0.4
    holder.wait(timeout=30)
