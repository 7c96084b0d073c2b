"""`shadoweval serve` runs the proxy; `shadoweval check-config` validates a config file.

Both load the config the same way, so a file that passes `check-config` starts `serve`
(barring a busy port). An invalid config ends with one message naming the field and a
non-zero exit, never a traceback (`ConfigError` is a `ShadowevalError`, see cli.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from proxy.config import Settings, load_settings
from proxy.errors import ConfigError


def _port(text: str) -> int:
    """argparse type: a TCP port number."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def _workers(text: str) -> int:
    """argparse type: a worker count within server.workers' bounds."""
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"workers must be 1-64, got {value}")
    return value


def _with_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    """Command-line `--host/--port/--workers` win over the config file."""
    update: dict[str, Any] = {}
    if args.host is not None:
        update["host"] = args.host
    if args.port is not None:
        update["port"] = args.port
    if args.workers is not None:
        update["workers"] = args.workers
    if not update:
        return settings
    return settings.model_copy(update={"server": settings.server.model_copy(update=update)})


def _load(path: str) -> Settings:
    """Load and validate the whole file, the offline `analysis` section included."""
    from analysis.settings import from_settings

    settings = load_settings(path)
    from_settings(settings, str(path))
    return settings


def _check_server(settings: Settings, source: str) -> None:
    """Cross-field server checks the config model does not make."""
    if settings.server.workers > 1 and settings.server.port == 0:
        raise ConfigError(f"{source}: server.port: must be a fixed port when server.workers > 1")


def _serve(args: argparse.Namespace) -> int:
    """`shadoweval serve`: run the proxy until SIGTERM/SIGINT."""
    from proxy import server
    from proxy.log import configure_logging

    settings = _with_overrides(_load(args.config), args)
    _check_server(settings, args.config)
    configure_logging(settings.logging)
    return server.run(settings)


def _check_config(args: argparse.Namespace) -> int:
    """`shadoweval check-config`: validate the whole file and summarise it."""
    settings = _load(args.file)
    _check_server(settings, args.file)
    enabled = [c.name for c in settings.candidates if c.enabled]
    print(f"{args.file}: ok")
    print(
        f"  listen      {settings.server.host}:{settings.server.port} ({settings.server.workers} worker(s))"
    )
    auth = "proxy's own key" if settings.production.api_key else "client's Authorization"
    print(f"  production  {settings.production.base_url} ({auth})")
    print(f"  candidates  {', '.join(enabled) or 'none enabled'}")
    print(f"  sampling    rate {settings.sampling.rate:g}, {len(settings.sampling.rules)} rule(s)")
    print(f"  lake        {settings.storage.data_dir}")
    sys.stdout.flush()
    return 0


def register(sub: Any) -> None:
    """Add `serve` and `check-config` to the CLI."""
    p = sub.add_parser("serve", help="run the shadowing proxy in front of production")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    p.add_argument(
        "--workers", type=_workers, default=None, help="worker processes on one port (SO_REUSEPORT)"
    )
    p.add_argument("--host", default=None, help="listen address (overrides server.host)")
    p.add_argument("--port", type=_port, default=None, help="listen port (overrides server.port)")
    p.set_defaults(func=_serve)

    c = sub.add_parser("check-config", help="validate a config file and summarise it")
    c.add_argument("file", metavar="FILE", help="YAML config file")
    c.set_defaults(func=_check_config)
