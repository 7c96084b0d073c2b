"""The proxy's admin endpoints: `POST /shadow/labels` lets applications send labels later.

An application that kept a response's `x-shadow-request-id` posts a JSON array of labels
(`proxy/lake/labels.py` describes one) with `Authorization: Bearer <admin.token>`:

- no `admin.token` configured: 403, the endpoint is disabled;
- a missing or wrong token: 401;
- a body over `admin.labels_max_bytes`: 413;
- any bad item: 400 with every bad item listed (`error.details`: `{"item": index, "reason"}`,
  0-based array indices) and nothing recorded;
- otherwise every label goes to the recorder and the answer is 200
  `{"accepted": n, "label_ids": [...]}`.

Request ids and targets are checked against the lake in a worker thread, so the event loop
never waits on disk. A request recorded moments ago may still sit in a recorder's buffer
(this process's or another worker's), so ids the lake does not know yet are looked up once
more after one flush interval before they are rejected; a label sent later than that is
never delayed. If the recorder's buffer is full (the proxy is overloaded), the labels it
could not take are listed in a 503 answer (with `accepted` for those it did) for the
client to resend.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog
from aiohttp import web

from proxy.config import Settings
from proxy.errors import body_too_large
from proxy.lake.labels import (
    LabelError,
    LakeIndex,
    Validation,
    check_against_lake,
    finish,
    lake_index,
    parse_all,
)
from proxy.lake.reader import connect

log = structlog.get_logger("shadoweval.admin")

LABELS_PATH = "/shadow/labels"
# Labels sent over HTTP come from applications unless they say otherwise.
DEFAULT_SOURCE = "system"
# Never hold a client longer than this waiting for a recorder to flush.
MAX_RECHECK_WAIT_S = 15.0


class LabelSink(Protocol):
    """What the endpoint needs of the recorder: `record` never blocks; False when full."""

    def record(self, dataset: str, row: dict[str, Any]) -> bool: ...


def _error(
    status: int,
    message: str,
    code: str,
    *,
    type_: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """OpenAI-style error JSON, with extra keys (e.g. `details`) inside `error`."""
    body = {"error": {"message": message, "type": type_, "code": code, "param": None, **extra}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def lookup_lake(data_dir: Path, request_ids: list[str]) -> LakeIndex:
    """Known targets of the given request ids; runs in a worker thread."""
    con = connect(data_dir)
    try:
        return lake_index(con, request_ids)
    finally:
        con.close()


class LabelsEndpoint:
    """`POST /shadow/labels`: authenticate, bound, validate, record."""

    def __init__(
        self,
        settings: Settings,
        recorder: LabelSink,
        *,
        lookup: Callable[[Path, list[str]], LakeIndex] = lookup_lake,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.token = settings.admin.token
        self.limit = settings.admin.labels_max_bytes
        self.data_dir = Path(settings.storage.data_dir)
        self.recheck_wait_s = min(settings.storage.flush_interval_s + 1.0, MAX_RECHECK_WAIT_S)
        self.recorder = recorder
        self._lookup = lookup
        self._sleep = sleep

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given or self.token is None:
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    async def handle(self, request: web.Request) -> web.Response:
        if not self.token:
            return _error(
                403,
                "the labels endpoint is disabled: set admin.token in the proxy's config",
                "admin_disabled",
                type_="permission_error",
            )
        if not self._authorised(request):
            return _error(
                401,
                "missing or wrong admin token (send 'Authorization: Bearer <admin.token>')",
                "invalid_admin_token",
                type_="authentication_error",
                headers={"WWW-Authenticate": 'Bearer realm="shadoweval-admin"'},
            )
        body = await _read_limited(request, self.limit)
        if body is None:
            err = body_too_large(self.limit)
            return _error(err.status, err.message, err.code)
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"the body is not valid JSON: {exc}", "invalid_json")
        if not isinstance(items, list):
            return _error(400, "the body must be a JSON array of labels", "invalid_labels")
        checked = await self.validate(items)
        if not checked.ok:
            return _error(
                400,
                f"{len(checked.errors)} of {len(items)} labels rejected; nothing was recorded",
                "invalid_labels",
                details=[e.as_dict() for e in checked.errors],
            )
        return self._record(checked)

    async def validate(self, items: list[Any]) -> Validation:
        """Shape first; then the lake, once more after a flush interval for unknown ids."""
        parsed, errors = parse_all(enumerate(items), default_source=DEFAULT_SOURCE)
        if not parsed:
            return finish(parsed, errors, LakeIndex())
        ids = sorted({p.request_id for p in parsed})
        index = await asyncio.to_thread(self._lookup, self.data_dir, ids)
        checked = finish(parsed, errors, index)
        if errors or not checked.errors:
            return checked
        # Only lake lookups failed: the rows may still be in a recorder's buffer.
        missing = sorted({p.request_id for p in parsed if check_against_lake(p, index)})
        log.debug("labels name unknown requests; looking again", count=len(missing))
        await self._sleep(self.recheck_wait_s)
        index.merge(await asyncio.to_thread(self._lookup, self.data_dir, missing))
        return finish(parsed, errors, index)

    def _record(self, checked: Validation) -> web.Response:
        dropped: list[LabelError] = []
        for i, row in enumerate(checked.rows):
            if not self.recorder.record("labels", row):
                dropped.append(LabelError(i, "the recorder's buffer is full; resend this label"))
        accepted = len(checked.rows) - len(dropped)
        if dropped:
            log.warning("labels dropped: recorder buffer full", dropped=len(dropped))
            return _error(
                503,
                f"the proxy is overloaded: {len(dropped)} labels were not recorded; resend those",
                "recorder_full",
                type_="server_error",
                headers={"Retry-After": "1"},
                details=[e.as_dict() for e in dropped],
                accepted=accepted,
            )
        log.info("labels accepted", count=accepted)
        return web.json_response(
            {"accepted": accepted, "label_ids": [r["label_id"] for r in checked.rows]},
            dumps=lambda v: orjson.dumps(v).decode(),
        )


def setup_admin(app: web.Application, settings: Settings, recorder: LabelSink) -> None:
    """Add the admin routes to the proxy's app (called by the app factory)."""
    endpoint = LabelsEndpoint(settings, recorder)
    app.router.add_post(LABELS_PATH, endpoint.handle)
