"""`shadoweval replay` as a user runs it: Ctrl-C (SIGINT) midway, then the same command resumes."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

from tests.analysis.test_replay import FakeCandidate, make_lake, replay_rows, serve

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, data_dir: Path, base_url: str) -> Path:
    path.write_text(
        f"""
production:
  base_url: http://127.0.0.1:9/v1
candidates:
  - name: cand
    base_url: {base_url}
    model: cand-model
    api_key: ${{CAND_KEY:-k}}
storage:
  data_dir: {data_dir}
"""
    )
    return path


async def run_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadoweval",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_ctrl_c_keeps_what_was_done_and_rerun_resumes(tmp_path: Path) -> None:
    data = tmp_path / "lake"
    ids = make_lake(data, [f"q{i}" for i in range(60)])
    fake = FakeCandidate(delay_s=0.05)
    server = await serve(fake)
    try:
        config = write_config(tmp_path / "c.yaml", data, str(server.make_url("/v1")))
        args = ["replay", "--config", str(config), "--eval-set", "es", "--candidate", "cand"]
        proc = await run_cli(*args, "--concurrency", "2", "--no-progress")
        for _ in range(3000):
            if len(fake.calls) >= 12 or proc.returncode is not None:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        text = err.decode()
        assert proc.returncode == 130, text
        assert "replay interrupted" in text and "Traceback" not in text
        done = int(re.search(r"(\d+) call\(s\) recorded", text).group(1))  # type: ignore[union-attr]
        assert 10 <= done < 60
        assert len(replay_rows(data)) == done

        proc = await run_cli(*args, "--no-progress")
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert f"{done} already recorded" in err.decode()
    finally:
        await server.close()
    rows = replay_rows(data)
    assert [r[0] for r in rows] == ids  # each request exactly once
