"""structlog, configured once per process: JSON lines for machines, console for a terminal.

Every log line of the proxy, including aiohttp's own, goes through the same processors,
so an operator's log pipeline sees one format. The server that received a request sets its
id in `CURRENT_REQUEST_ID` (one context variable: cheaper per request than structlog's
`bind_contextvars`), and every line logged while it runs carries it as `request_id`.
Nothing here ever logs a request body or a header; callers pass only ids, routes, statuses
and timings.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog

from proxy.config import LoggingSettings, Settings

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


# The id of the request being handled in this context, if any.
CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("shadoweval_request_id", default=None)


def access_lines(settings: Settings) -> bool:
    """Whether the proxy writes its access line per request: configured on, and at a level
    that lets `info` lines through. A line the level filters out still costs its call
    (about 2.5 us a request), so it is not made at all."""
    return settings.server.access_log and _LEVELS[settings.logging.level] <= logging.INFO


def add_request_id(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the running request's id, unless the line names one itself."""
    rid = CURRENT_REQUEST_ID.get()
    if rid is not None:
        event_dict.setdefault("request_id", rid)
    return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    """structlog's serializer: orjson, with str() for anything it cannot encode."""
    return orjson.dumps(obj, default=default or str).decode()


def wants_console(fmt: str, stream: TextIO) -> bool:
    """`auto` means console rendering on a terminal and JSON lines everywhere else."""
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return fmt == "console"


def configure_logging(
    settings: LoggingSettings, *, stream: TextIO | None = None, cache: bool = True
) -> None:
    """Route structlog and stdlib logging to `stream` (stderr) in one format, at one level.

    `cache` freezes each logger's configuration on first use (faster); tests that
    reconfigure logging in one process pass False.
    """
    out = stream if stream is not None else sys.stderr
    level = _LEVELS[settings.level]
    console = wants_console(settings.format, out)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    # Tracebacks never show local variables: a request's locals hold its Authorization
    # header, prompts and keys, and logs are read by more people than the lake is.
    if console:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(),
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
        )
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    tracebacks = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    tail: list[Any] = [] if console else [tracebacks]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=cache,
    )
    # Library loggers (aiohttp, asyncio) render through the same processors.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by the proxy's one line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
