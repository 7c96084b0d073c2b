"""`shadoweval serve`: not built yet (placeholder so the CLI lists every stable command)."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.errors import ShadowevalError


def _run(args: argparse.Namespace) -> int:
    raise ShadowevalError("'serve' is not built yet")


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="(not built yet)")
    p.set_defaults(func=_run)
