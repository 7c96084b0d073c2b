"""Our few exception types, and their OpenAI-style JSON form.

Built-in exceptions cover the rest. `error_response` is the only place that shapes
an error body, so every error a client sees from the proxy looks the same:
`{"error": {"message", "type", "code"}}`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:  # aiohttp is imported where a response is built: the lake writer needs none
    from aiohttp import web


class ShadowevalError(Exception):
    """Base for errors that carry a message meant for the user, not a traceback."""


class ConfigError(ShadowevalError):
    """The configuration is invalid; the message names the field and the reason."""


class LakeError(ShadowevalError):
    """The lake on disk cannot be read or written as asked."""


class InputError(ShadowevalError):
    """User input (a label file, a query, an argument) is rejected; the message says why."""


class ClientStalled(ConnectionResetError):
    """The client stopped reading its answer for `server.client_write_timeout_s`: the
    proxy closed the connection (and so stopped reading production's answer)."""


class ProxyHTTPError(ShadowevalError):
    """An error the proxy itself answers with (not one relayed from an upstream)."""

    def __init__(self, status: int, message: str, type_: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code


def error_body(message: str, type_: str, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code, "param": None}})


def error_response(
    status: int, message: str, type_: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    from aiohttp import web

    return web.Response(
        status=status,
        body=error_body(message, type_, code),
        content_type="application/json",
        headers=headers,
    )


def upstream_unreachable(detail: str) -> ProxyHTTPError:
    return ProxyHTTPError(502, f"upstream unreachable: {detail}", "upstream_error", "bad_gateway")


def upstream_timeout(detail: str) -> ProxyHTTPError:
    return ProxyHTTPError(504, f"upstream timed out: {detail}", "upstream_error", "gateway_timeout")


def body_too_large(limit: int) -> ProxyHTTPError:
    return ProxyHTTPError(
        413,
        f"request body exceeds the proxy's limit of {limit} bytes",
        "invalid_request_error",
        "request_too_large",
    )


def not_found(path: str) -> ProxyHTTPError:
    return ProxyHTTPError(404, f"unknown route: {path}", "invalid_request_error", "not_found")


def upstream_error_code(body: bytes) -> str | None:
    """The short code or type of an OpenAI-style error body; never its message (may echo input)."""
    try:
        err = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(err, dict):
        value = err.get("code") or err.get("type")
        return str(value)[:100] if value else None
    return None


def describe_exception(exc: BaseException, limit: int | None = None) -> str:
    """A short failure description for logs and error JSON: type and message, no content."""
    text = str(exc)
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out if limit is None else out[:limit]
