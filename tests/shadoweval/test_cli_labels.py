"""`shadoweval labels` and `shadoweval evalset` from the command line, exit codes and output."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.lake.writer import write_rows
from shadoweval.cli import main

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    data = tmp_path / "lake"
    write_rows(
        data,
        "requests",
        [
            {
                "request_id": f"r{i:03d}",
                "received_at": T0,
                "route": "/v1/chat/completions",
                "body": json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}),
                "prompt_hash": f"h{i}",
                "tags": ["a" if i % 3 else "b"],
                "mirrored": True,
                "sample_rate": 1.0,
            }
            for i in range(30)
        ],
        kind="test",
    )
    write_rows(
        data,
        "responses",
        [
            {"request_id": f"r{i:03d}", "target": t, "source": "live", "started_at": T0}
            for i in range(30)
            for t in ("production", "cand")
        ],
        kind="test",
    )
    return data


def test_labels_import_then_export(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.csv"
    src.write_text(
        "request_id,kind,target,value,labeller\n"
        "r001,reference,,billing,ann\n"
        "r002,verdict,cand,incorrect,ann\n"
    )
    assert main(["labels", "import", str(src), "--data", str(lake)]) == 0
    assert "imported 2 label(s)" in capsys.readouterr().err
    out = tmp_path / "out.jsonl"
    assert main(["labels", "export", "--data", str(lake), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["request_id"], r["value"]) for r in rows] == [("r001", "billing"), ("r002", False)]
    assert main(["labels", "export", "--data", str(lake), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("label_id,request_id,kind,target,value")


def test_labels_import_rejects_the_whole_file(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(
        '{"request_id": "r001", "kind": "reference", "value": "x"}\n'
        '{"request_id": "zzz", "kind": "reference", "value": "x"}\n'
        '{"request_id": "r001", "kind": "verdict", "value": true}\n'
    )
    assert main(["labels", "import", str(src), "--data", str(lake)]) == 2
    err = capsys.readouterr().err
    assert "2 bad line(s); nothing was imported" in err
    assert "line 2: unknown request id 'zzz'" in err
    assert "line 3: a verdict needs a target" in err
    assert "Traceback" not in err


def test_evalset_build_status_export_list(
    lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(lake)
    args = ["evalset", "build", "--data", data, "--name", "s1", "--size", "12"]
    assert main([*args, "--strata", "tags", "--min-per-stratum", "5"]) == 0
    out = capsys.readouterr().out
    assert "eval set s1: 12 requests" in out
    assert main([*args, "--strata", "tags"]) == 2
    assert "already exists and is frozen" in capsys.readouterr().err

    assert main(["evalset", "status", "--data", data, "s1", "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["strata"][0]["items"] == 12 and status["strata"][0]["missing"] == 12
    assert main(["evalset", "status", "--data", data, "s1"]) == 0
    assert "labelling status" in capsys.readouterr().out

    dest = tmp_path / "s1.jsonl"
    assert main(["evalset", "export", "--data", data, "--name", "s1", "--out", str(dest)]) == 0
    items = [json.loads(x) for x in dest.read_text().splitlines()]
    assert len(items) == 12 and all(x["weight"] >= 1 for x in items)

    assert main(["evalset", "list", "--data", data]) == 0
    assert "s1" in capsys.readouterr().out
    assert main(["evalset", "status", "--data", data, "nope"]) == 2


def test_entry_point_runs_as_a_module(lake: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shadoweval", "evalset", "list", "--data", str(lake)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "no eval sets yet" in done.stderr
