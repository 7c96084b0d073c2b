"""`shadoweval report`: score the eval set, compute every figure and say which model to deploy.

    shadoweval report --data DIR [--config FILE] [--eval-set NAME]
                      [--format table|json|markdown|html] [--out FILE] [--no-judge]

Outputs still waiting for an LLM judge's verdict are judged first (the verdicts are stored
as labels, so this happens once), unless `--no-judge`. The scored table is also written as
the `comparisons` dataset for SQL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from proxy.errors import InputError


def _settings(args: argparse.Namespace) -> tuple[Path, Any]:
    from analysis.settings import from_settings, parse_analysis
    from proxy.config import load_settings

    if args.config is not None:
        settings = load_settings(args.config)
        analysis = from_settings(settings, str(args.config))
        data = Path(args.data) if args.data else Path(settings.storage.data_dir)
    else:
        if not args.data:
            raise InputError("give --data DIR (or --config FILE with storage.data_dir)")
        analysis = parse_analysis(None)
        data = Path(args.data)
    if not data.is_dir():
        raise InputError(f"no lake at {data}: the directory does not exist")
    return data, analysis


def _run(args: argparse.Namespace) -> int:
    from analysis.comparisons import (
        build_comparisons,
        open_lake,
        register_comparisons_view,
        resolve_eval_set,
        write_comparisons,
    )
    from analysis.evaluate import evaluate_table
    from analysis.judge import judge_pending, pending_tasks
    from analysis.report import render

    data, analysis = _settings(args)
    con = open_lake(data)
    eval_set = resolve_eval_set(con, args.eval_set)
    table = build_comparisons(con, analysis, eval_set)
    if not args.no_judge and pending_tasks(table):
        print(f"judging {len(pending_tasks(table))} outputs…", file=sys.stderr)
        summary = asyncio.run(judge_pending(data, analysis, table, con))
        print(f"judged {summary.judged}, failed {summary.failed}", file=sys.stderr)
        for err in summary.errors:
            print(f"  {err}", file=sys.stderr)
        table = build_comparisons(con, analysis, eval_set)
    if len(table):
        write_comparisons(data, table)
        register_comparisons_view(data)
    report = evaluate_table(con, table, analysis, data_dir=str(data))

    if args.out is not None:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(report, args.format), encoding="utf-8")
        print(f"report written to {out}", file=sys.stderr)
    elif args.format == "table":
        from rich.console import Console, Group

        from analysis.report.table import renderables

        Console().print(Group(*renderables(report)))
    else:
        sys.stdout.write(render(report, args.format))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="score the eval set and decide which candidate to deploy",
        description="Score the eval set, compute every figure with its interval, and decide.",
    )
    p.add_argument("--data", metavar="DIR", help="the lake (default: storage.data_dir of --config)")
    p.add_argument("--config", metavar="FILE", help="config with the analysis section")
    p.add_argument("--eval-set", metavar="NAME", help="eval set to analyse (default: the newest)")
    p.add_argument(
        "--format",
        choices=("table", "json", "markdown", "html"),
        default="table",
        help="output format",
    )
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument("--no-judge", action="store_true", help="do not call the LLM judge")
    p.set_defaults(func=_run)
