"""`shadoweval label`: the web page people label an eval set with (analysis/labelui/)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from proxy.errors import InputError

TOKEN_ENV = "SHADOWEVAL_LABEL_TOKEN"


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def _minutes(text: str) -> float:
    value = float(text)
    if not 0 < value <= 24 * 60:
        raise argparse.ArgumentTypeError(f"lease must be between 0 and 1440 minutes, got {value}")
    return value


def _run(args: argparse.Namespace) -> int:
    from analysis.labelui.security import check_binding
    from analysis.labelui.server import serve

    data = Path(args.data)
    if not data.is_dir():
        raise InputError(f"no lake at {data}: the directory does not exist")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    check_binding(args.host, token)
    asyncio.run(
        serve(
            data,
            eval_set=args.eval_set,
            host=args.host,
            port=args.port,
            token=token,
            lease_s=args.lease_minutes * 60.0,
        )
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "label",
        help="label an eval set in the browser (blinded outputs, keyboard shortcuts)",
        description=(
            "Serve the labelling web page for an eval set. Outputs are shown blinded and in "
            "random order; labels go to the lake with the labeller's name and source=human."
        ),
    )
    p.add_argument("--data", required=True, help="the lake directory (storage.data_dir)")
    p.add_argument("--eval-set", default=None, help="eval set to label (default: the newest)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 = any free)")
    p.add_argument(
        "--token",
        default=None,
        help=f"access token, required when binding beyond loopback (or ${TOKEN_ENV})",
    )
    p.add_argument(
        "--lease-minutes",
        type=_minutes,
        default=5.0,
        help="how long an open item stays reserved for its labeller (default 5)",
    )
    p.set_defaults(func=_run)
