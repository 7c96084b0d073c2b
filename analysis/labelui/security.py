"""Who may use the labelling server, and how its forms resist forgery.

- Binding: loopback by default; any other address needs a token (`check_binding` refuses
  to start without one).
- Token: when set, every request must carry it - `Authorization: Bearer T`, the cookie a
  first visit with `?token=T` sets (the token is then dropped from the address), or that
  query parameter itself.
- Without a token the server answers only requests addressed to a loopback host name, so
  a web page cannot reach it through DNS rebinding.
- Forms: a POST must come from this origin (`Origin`, else `Referer`, when the browser
  sends one) and carry the per-browser CSRF value of its cookie (double submit).
- Every page forbids inline script, framing and outside resources (Content-Security-Policy),
  a second line of defence behind escaping.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.errors import InputError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKEN_COOKIE = "labelui_token"
CSRF_COOKIE = "labelui_csrf"
CSRF_KEY = web.RequestKey("labelui_csrf", str)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    """True for a host name or address that only this machine can reach."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise InputError(
            f"refusing to bind {host!r} without a token: labels and prompts would be open to "
            "anyone who can reach it; pass --token (or bind 127.0.0.1)"
        )


def _host_name(host_header: str) -> str:
    return urlsplit(f"//{host_header}").hostname or ""


def _same_origin(request: web.Request) -> bool:
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return source is None
    return urlsplit(source).netloc.lower() == request.host.lower()


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=HEADERS)


def security_middleware(token: str | None) -> Middleware:
    """The one middleware that applies every rule above."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None and not is_loopback(_host_name(request.host)):
            return _text(403, "this labelling server answers only on a loopback address")
        if token is not None:
            given = request.cookies.get(TOKEN_COOKIE) or ""
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                given = auth.removeprefix("Bearer ").strip()
            from_query = request.query.get("token")
            if from_query is not None and hmac.compare_digest(from_query, token):
                if request.method == "GET":
                    clean = request.rel_url.without_query_params("token")
                    resp = web.Response(status=303, headers={**HEADERS, "Location": str(clean)})
                    resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
                    return resp
                given = from_query
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _text(401, "a token is required: open the address with ?token=...")
        cookie = request.cookies.get(CSRF_COOKIE) or ""
        new_csrf = len(cookie) < 16
        csrf = secrets.token_urlsafe(24) if new_csrf else cookie
        request[CSRF_KEY] = csrf
        if request.method == "POST":
            form = await request.post()
            sent = form.get("csrf")
            if (
                new_csrf
                or not isinstance(sent, str)
                or not _same_origin(request)
                or not hmac.compare_digest(sent.encode(), csrf.encode())
            ):
                return _text(403, "this form did not come from this page; reload and try again")
        response = await handler(request)
        response.headers.update(HEADERS)
        if new_csrf:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="Strict")
        return response

    return middleware
