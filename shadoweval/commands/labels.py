"""`shadoweval labels import|export`: labels from and to CSV/JSONL files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from analysis.labels import export_labels, import_labels


def _import(args: argparse.Namespace) -> int:
    n = import_labels(args.file, args.data)
    print(f"imported {n} label(s) from {args.file}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    n = export_labels(args.data, args.out, args.format, history=args.history)
    where = args.out if args.out not in (None, "-") else "stdout"
    print(f"exported {n} label(s) to {where}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("labels", help="import or export labels (CSV or JSONL)")
    actions = p.add_subparsers(dest="labels_command", metavar="ACTION")
    actions.required = True

    imp = actions.add_parser(
        "import",
        help="import a label file; a bad line rejects the whole file",
        description="Columns/keys: request_id, kind, target, value, labeller, source "
        "(label_id and created_at are kept when present). Every line is checked first; "
        "one bad line rejects the file and every bad line is listed.",
    )
    imp.add_argument("file", type=Path, help="a .csv or .jsonl file")
    imp.add_argument("--data", type=Path, required=True, help="the lake directory")
    imp.set_defaults(func=_import)

    exp = actions.add_parser("export", help="export labels (the newest per key, or --history)")
    exp.add_argument("--data", type=Path, required=True, help="the lake directory")
    exp.add_argument("--out", help="output file (default: stdout)")
    exp.add_argument(
        "--format", choices=("csv", "jsonl"), help="default: from --out's suffix, else jsonl"
    )
    exp.add_argument(
        "--history", action="store_true", help="every label ever given, not just the newest"
    )
    exp.set_defaults(func=_export)
