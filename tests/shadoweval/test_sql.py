"""`shadoweval sql` and `shadoweval compact` on a real lake, in-process and as a subprocess."""

import csv
import io
import subprocess
import sys
import time

import orjson
import pytest

from proxy.lake.writer import SegmentWriter
from shadoweval.cli import main
from tests.proxy.lake.conftest import request_row, response_row


@pytest.fixture
def lake(tmp_path):
    w = SegmentWriter(tmp_path, "w1")
    w.write("requests", [request_row(i) for i in range(3)])
    w.write("responses", [response_row(i) for i in range(3)])
    w.write("responses", [response_row(i, target="cand") for i in range(3)])
    return tmp_path


def _cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "shadoweval", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


QUERY = (
    "SELECT target, count(*) AS n, sum(latency_ms) AS total FROM responses GROUP BY 1 ORDER BY 1"
)


def test_query_as_csv_and_json(lake, capsys):
    assert main(["sql", "--data", str(lake), QUERY, "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["target", "n", "total"], ["cand", "3", "303.0"], ["production", "3", "303.0"]]

    q = "SELECT request_id, tags, received_at, session_id FROM requests ORDER BY 1 LIMIT 1"
    assert main(["sql", "--data", str(lake), q, "--format", "json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == [
        {
            "request_id": "req-000000",
            "tags": ["t1", "n0"],
            "received_at": "2026-03-01T12:00:00+00:00",
            "session_id": "s0",
        }
    ]


def test_table_output_in_a_subprocess(lake):
    out = _cli("sql", "--data", str(lake), QUERY)
    assert out.returncode == 0, out.stderr
    assert "production" in out.stdout and "cand" in out.stdout and "(2 rows)" in out.stdout


def test_interactive_prompt_reads_statements_until_quit(lake):
    script = (
        "SELECT count(*) AS n\n  FROM requests;\n"
        "SELECT nope FROM requests;\n"  # an error does not end the session
        ".tables\n"
        "SELECT count(*) AS m FROM labels_latest;\n"
        ".quit\n"
        "SELECT 'never run';\n"
    )
    out = _cli("sql", "--data", str(lake), "--format", "csv", stdin=script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "n",
        "3",
        "requests",
        "responses",
        "labels",
        "eval_sets",
        "labels_latest",
        "m",
        "0",
    ]
    assert "nope" in out.stderr


def test_interactive_runs_a_last_statement_without_semicolon_at_eof(lake):
    out = _cli("sql", "--data", str(lake), "--format", "csv", stdin="SELECT 41 + 1 AS x")
    assert out.returncode == 0 and out.stdout.splitlines() == ["x", "42"]


def test_errors_are_one_line(lake, tmp_path, capsys):
    assert main(["sql", "--data", str(lake), "SELEC 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shadoweval: error: Parser Error") and err.count("\n") == 1
    assert main(["sql", "--data", str(tmp_path / "missing"), "SELECT 1"]) == 2
    assert "no lake at" in capsys.readouterr().err


def test_compact_command_merges_and_keeps_rows(lake, capsys):
    q = "SELECT count(*), count(DISTINCT target || request_id) FROM responses"
    assert main(["sql", "--data", str(lake), q, "--format", "csv"]) == 0
    before = capsys.readouterr().out
    time.sleep(0.05)
    assert main(["compact", "--data", str(lake), "--older-than", "0"]) == 0
    out = capsys.readouterr().out
    assert "merged 2 segments into 1 (6 rows)" in out  # requests has one segment: left alone
    assert main(["sql", "--data", str(lake), q, "--format", "csv"]) == 0
    assert capsys.readouterr().out == before
    assert (lake / "catalog.duckdb").exists()
