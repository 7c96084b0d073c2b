"""The `shadoweval` command: one entry point, one module per subcommand group.

Each module in `shadoweval/commands/` exposes `register(subparsers)`, which adds its
subcommand(s) with `set_defaults(func=...)`; `func(args) -> int` is the exit code.
User-facing errors (`ShadowevalError`) print one clear line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from proxy.errors import ShadowevalError

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = (
    "serve",
    "simulate",
    "demo",
    "sql",
    "labels",
    "evalset",
    "replay",
    "label",
    "report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shadoweval",
        description="Evaluate candidate LLMs on your own production traffic.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"shadoweval.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except ShadowevalError as exc:
        print(f"shadoweval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shadoweval: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
