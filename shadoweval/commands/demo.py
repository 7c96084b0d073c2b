"""`shadoweval demo`: the whole loop - simulated models, proxy, traffic, labels, replay, report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _scale(text: str) -> float:
    value = float(text)
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be in (0, 100], got {value}")
    return value


def _run(args: argparse.Namespace) -> int:
    from shadoweval.demo import DemoOptions, run_demo

    given = {
        k: v
        for k, v in {
            "out": Path(args.out),
            "requests": args.requests,
            "concurrency": args.concurrency,
            "eval_size": args.eval_size,
            "time_scale": args.time_scale,
            "seed": args.seed,
            "progress": not args.no_progress,
        }.items()
        if v is not None
    }
    opts = DemoOptions.quick(**given) if args.quick else DemoOptions(**given)
    run_demo(opts)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole loop on simulated models (no keys, no network)",
        description=(
            "Start simulated models and the proxy, send traffic through it with the openai SDK, "
            "build and label an eval set, replay a candidate, and write the report."
        ),
    )
    p.add_argument(
        "--out",
        default="shadoweval-demo",
        metavar="DIR",
        help="where everything goes (default ./shadoweval-demo; a previous demo there is replaced)",
    )
    p.add_argument(
        "--requests",
        type=_positive,
        metavar="N",
        help="requests to send (default 2500; --quick 600)",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer requests, a smaller eval set, fewer resamples"
    )
    p.add_argument(
        "--concurrency", type=_positive, metavar="N", help="requests in flight at once (default 64)"
    )
    p.add_argument(
        "--eval-size", type=_positive, metavar="N", help="eval set size (default 300; --quick 200)"
    )
    p.add_argument(
        "--time-scale",
        type=_scale,
        metavar="X",
        help="multiply simulated latencies and the SLO by X (default 1: real-looking latencies)",
    )
    p.add_argument("--seed", type=int, help="seed for traffic, eval set and labels (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
