"""`shadoweval replay`: run a frozen eval set through one candidate, resumably."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.config import load_settings

if TYPE_CHECKING:
    from analysis.replay import ReplaySummary


def _report(summary: ReplaySummary, candidate: str) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(summary.errors.items())) or "none"
    parts = [
        f"{summary.done} call(s) recorded for {candidate}",
        f"{summary.skipped} already recorded",
        f"errors: {errors}",
    ]
    if summary.no_content:
        parts.append(f"{summary.no_content} request(s) without content skipped")
    return "; ".join(parts)


def _run(args: argparse.Namespace) -> int:
    # Imported here: `shadoweval --help` need not load the HTTP client stack.
    from analysis.replay import Replay

    settings = load_settings(args.config)
    replay = Replay(
        settings,
        args.eval_set,
        args.candidate,
        repeats=args.repeats,
        concurrency=args.concurrency,
        rate=args.rate,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )
    try:
        summary = asyncio.run(replay.run())
    except KeyboardInterrupt:
        left = replay.summary.planned - replay.summary.done
        print(
            f"replay interrupted: {_report(replay.summary, args.candidate)}; {left} left - "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    if summary.planned == 0:
        print(f"nothing to do: {_report(summary, args.candidate)}", file=sys.stderr)
        return 0
    print(f"replay finished: {_report(summary, args.candidate)}", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="send an eval set's requests to a candidate and record its answers",
        description="Records responses rows with source=replay (attempt 1..K). Calls already "
        "recorded are skipped, so running the same command again resumes; Ctrl-C stops "
        "cleanly and keeps what was done. The lake is the config's storage.data_dir.",
    )
    p.add_argument("--config", type=Path, required=True, help="the proxy's config file")
    p.add_argument("--eval-set", required=True, metavar="NAME")
    p.add_argument("--candidate", required=True, metavar="NAME")
    p.add_argument("--repeats", type=_positive_int, default=1, metavar="K")
    p.add_argument("--concurrency", type=_positive_int, default=4, metavar="N")
    p.add_argument("--rate", type=_positive_float, metavar="R", help="at most R calls per second")
    p.add_argument(
        "--retry-failed", action="store_true", help="send again the calls that failed last time"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
