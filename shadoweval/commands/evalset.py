"""`shadoweval evalset build|export|status|list`: choose, share and track what to label."""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from analysis.evalset import (
    BuildOptions,
    build_eval_set,
    eval_set_status,
    export_eval_set,
    list_eval_sets,
)
from analysis.strata import STRATEGIES


def _when(text: str) -> datetime:
    """A date or ISO time from the command line; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or ISO time: {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _build(args: argparse.Namespace) -> int:
    opts = BuildOptions(
        name=args.name,
        size=args.size,
        min_per_stratum=args.min_per_stratum,
        strata=args.strata,
        oversample_disagreement=args.oversample_disagreement,
        seed=args.seed,
        since=args.since,
        until=args.until,
        route=args.route,
        only_mirrored=args.only_mirrored,
        clusters=args.clusters,
    )
    result = build_eval_set(args.data, opts)
    sel = result.selection
    probs: dict[str, list[float]] = defaultdict(list)
    for s, p in zip(sel.strata, sel.inclusion_prob, strict=True):
        probs[s].append(p)
    table = Table(title=f"eval set {result.name}: {len(sel.request_ids)} requests")
    for col in ("stratum", "requests", "selected", "inclusion prob."):
        table.add_column(col, justify="left" if col == "stratum" else "right")
    for s in sorted(sel.population, key=lambda k: -sel.population[k]):
        lo, hi = min(probs[s]), max(probs[s])
        shown = f"{lo:.4g}" if lo == hi else f"{lo:.4g} - {hi:.4g}"
        table.add_row(s, str(sel.population[s]), str(sel.allocation[s]), shown)
    console = Console()
    console.print(table)
    if opts.oversample_disagreement != 1.0:
        console.print(f"{result.disagreeing} requests where a candidate disagreed with production")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.out in (None, "-"):
        n = export_eval_set(args.data, args.name, sys.stdout)
    else:
        out = Path(args.out)
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            n = export_eval_set(args.data, args.name, fh)
        tmp.replace(out)
    print(f"exported {n} item(s) of {args.name}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    st = eval_set_status(args.data, args.name)
    if args.format == "json":
        rows = [st.total, *st.strata]
        doc: dict[str, Any] = {
            "name": st.name,
            "created_at": st.created_at.isoformat() if st.created_at else None,
            "strata": [{**vars(r), "missing": r.missing} for r in rows],
            "outputs": st.outputs,
            "missing_ids": st.missing_ids,
        }
        print(json.dumps(doc, indent=2))
        return 0
    table = Table(title=f"eval set {st.name}: labelling status")
    for col in ("stratum", "items", "labelled", "reference", "verdict", "missing"):
        table.add_column(col, justify="left" if col == "stratum" else "right")
    for r in [*st.strata, st.total]:
        table.add_row(
            r.stratum,
            str(r.items),
            f"{r.labelled} ({r.labelled / r.items:.0%})" if r.items else "0",
            str(r.with_reference),
            str(r.with_verdict),
            str(r.missing),
            style="bold" if r is st.total else None,
        )
    console = Console()
    console.print(table)
    outputs = ", ".join(f"{t} {n}/{st.total.items}" for t, n in st.outputs.items()) or "none"
    console.print(f"items with an output: {outputs}")
    if st.missing_ids:
        more = " ..." if st.total.missing > len(st.missing_ids) else ""
        console.print(f"unlabelled: {' '.join(st.missing_ids)}{more}")
    return 0


def _list(args: argparse.Namespace) -> int:
    sets = list_eval_sets(args.data)
    if not sets:
        print("no eval sets yet (build one with `shadoweval evalset build`)", file=sys.stderr)
        return 0
    table = Table(title="eval sets")
    for col in ("name", "items", "strata", "built"):
        table.add_column(col)
    for s in sets:
        built = s["created_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        table.add_row(s["name"], str(s["items"]), str(s["strata"]), built)
    Console().print(table)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("evalset", help="build, export and track eval sets")
    actions = p.add_subparsers(dest="evalset_command", metavar="ACTION")
    actions.required = True

    b = actions.add_parser(
        "build",
        help="draw a new (frozen) eval set from recorded traffic",
        description="A stratified random sample of distinct recorded requests; every item "
        "stores its inclusion probability so results can be weighted back to the traffic.",
    )
    b.add_argument("--data", type=Path, required=True, help="the lake directory")
    b.add_argument("--name", required=True, help="a new name (eval sets are frozen)")
    b.add_argument("--size", type=_positive, required=True, help="number of requests")
    b.add_argument("--min-per-stratum", type=int, default=0, metavar="M")
    b.add_argument("--strata", choices=STRATEGIES, default="auto", help="default: auto")
    b.add_argument(
        "--oversample-disagreement",
        type=float,
        default=1.0,
        metavar="F",
        help="draw requests where a candidate disagreed with production F times as often",
    )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--clusters", type=_positive, help="number of text clusters (default: auto)")
    b.add_argument("--since", type=_when, help="only requests received at or after (UTC)")
    b.add_argument("--until", type=_when, help="only requests received before (UTC)")
    b.add_argument("--route", help="only this route, e.g. /v1/chat/completions")
    b.add_argument("--only-mirrored", action="store_true", help="only mirrored requests")
    b.set_defaults(func=_build)

    e = actions.add_parser("export", help="write an eval set as JSONL")
    e.add_argument("--data", type=Path, required=True, help="the lake directory")
    e.add_argument("--name", required=True)
    e.add_argument("--out", help="output file (default: stdout)")
    e.set_defaults(func=_export)

    s = actions.add_parser("status", help="labelled counts per stratum and what is missing")
    s.add_argument("--data", type=Path, required=True, help="the lake directory")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=_status)

    ls = actions.add_parser("list", help="every eval set in the lake")
    ls.add_argument("--data", type=Path, required=True, help="the lake directory")
    ls.set_defaults(func=_list)
