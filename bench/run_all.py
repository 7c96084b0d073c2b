"""`make bench`: every benchmark in bench/, one after another, with modest defaults.

Each benchmark runs as its own process (`python -m bench.<name> ...`), so one that fails
does not stop the others; the exit code is non-zero if any failed. The known ones get
settings short enough for a routine run (a few minutes each); any other module in bench/
with a `main()` runs with its own defaults. Figures go to bench/results/*.json; the
published figures in docs/benchmarks.md come from the longer runs its sections name.

Usage: python -m bench.run_all [--only NAME ...] [--skip NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# Known benchmarks, in the order they run, with their routine settings.
PLAN: dict[str, list[str]] = {
    "proxy_overhead": ["--rounds", "3", "--seconds", "10", "--wrk-seconds", "5"],
    "memory_soak": ["--minutes", "2", "--every", "5"],
    "bench_recorder": ["--runs", "3"],
    "bench_report": ["--runs", "3"],
}
_HAS_MAIN = re.compile(r"^def main\(|^if __name__ == .__main__.:", re.MULTILINE)


def discover() -> list[str]:
    """Known benchmarks present in bench/, then any other module there with a `main()`."""
    present = {
        p.stem
        for p in BENCH_DIR.glob("*.py")
        if p.stem not in ("__init__", "run_all")
        and len(_HAS_MAIN.findall(p.read_text(encoding="utf-8"))) >= 2
    }
    known = [name for name in PLAN if name in present]
    return known + sorted(present - set(known))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME")
    ap.add_argument("--skip", nargs="+", default=[], metavar="NAME")
    ap.add_argument("--list", action="store_true", help="print what would run, then stop")
    args = ap.parse_args()
    names = [n for n in discover() if (args.only is None or n in args.only) and n not in args.skip]
    unknown = set(args.only or []) - set(discover())
    if unknown:
        print(f"no such benchmark: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    results: list[tuple[str, int, float]] = []
    for name in names:
        cmd = [sys.executable, "-m", f"bench.{name}", *PLAN.get(name, [])]
        print(f"== {' '.join(cmd[1:])}", flush=True)
        if args.list:
            continue
        t0 = time.monotonic()
        code = subprocess.run(cmd, cwd=BENCH_DIR.parent).returncode
        results.append((name, code, time.monotonic() - t0))
    for name, code, secs in results:
        print(f"{name:<16} {'ok' if code == 0 else f'FAILED ({code})':<12} {secs:6.0f} s")
    return 1 if any(code != 0 for _, code, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
