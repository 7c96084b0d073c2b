"""The `requests` row of one recorded request: its body parsed once, its prompt hashed.

Built by `proxy.capture.Capture` once the request is on its way to production, so none of
this (JSON parse, sampling, hashing) sits between the client's request and production.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.lake.rows import OMIT_KEY
from proxy.sampling import SamplingDecision


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, parsed once; None for anything else (still forwarded)."""
    if not body:
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def prompt_part(route: str, body: Mapping[str, Any]) -> Any:
    """The part of a request body that is the prompt: messages, prompt, or input."""
    if route == "/v1/chat/completions":
        return body.get("messages")
    if route == "/v1/completions":
        return body.get("prompt")
    if route == "/v1/responses" and body.get("instructions") is not None:
        return {"instructions": body.get("instructions"), "input": body.get("input")}
    return body.get("input")


def prompt_hash(route: str, body: Mapping[str, Any]) -> str | None:
    """sha256 hex of the prompt part, canonically serialised; None when there is none."""
    part = prompt_part(route, body)
    if part is None:
        return None
    try:
        canonical = orjson.dumps(part, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None
    return hashlib.sha256(canonical).hexdigest()


def request_row(
    *,
    request_id: str,
    received_at: int,
    route: str,
    method: str,
    raw_body: bytes,
    body: dict[str, Any] | None,
    decision: SamplingDecision,
    omit: bool,
) -> dict[str, Any]:
    """The `requests` row; the body goes in as received (the recorder decodes and redacts)."""
    model = body.get("model") if body is not None else None
    return {
        "request_id": request_id,
        "received_at": received_at,
        "route": route,
        "method": method,
        "model": model if isinstance(model, str) else None,
        "stream": body is not None and body.get("stream") is True,
        "body": raw_body if raw_body else None,
        "prompt_hash": prompt_hash(route, body) if body is not None else None,
        "session_id": decision.session_id,
        "tags": list(decision.tags),
        "sample_rate": decision.sample_rate,
        "mirrored": decision.mirrored,
        "content_omitted": omit,
        OMIT_KEY: omit,
    }
