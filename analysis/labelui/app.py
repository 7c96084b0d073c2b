"""The labelling web app: `create_labelui_app(data_dir, ...)` builds it; state under AppKeys.

Routes: `/` (ask the labeller's name once, then label), `/next` (lease the next item and
go to it; `?queue=second` for second opinions), `/item/{id}` (judge it; POST submits,
skips or flags), `/item/{id}/reveal` (which output was which target, only after
submitting), `/progress`, `/agreement`, `/static/...`. Labels are written to the lake with
`source = human` and the labeller's name: a `verdict` per target (true, false, or 0.5 for
"partly"), a `reference` when one is typed, and a flag as an `outcome` label (store.py).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from analysis.labelui import render
from analysis.labelui.agreement import load_agreement
from analysis.labelui.blinding import Card, blind, layout_token
from analysis.labelui.queue import DEFAULT_LEASE_S, LabelQueue, QueueName
from analysis.labelui.security import CSRF_KEY, check_binding, security_middleware
from analysis.labelui.store import label_rows, load_snapshot, open_eval_set, write_labels

NAME_COOKIE = "labelui_name"
MAX_NAME = 64
MAX_REFERENCE = 20_000
VERDICT_VALUES: dict[str, Any] = {"correct": True, "incorrect": False, "partly": 0.5}
STATIC = {"labelui.js": "application/javascript", "labelui.css": "text/css"}


@dataclass(frozen=True)
class Reveal:
    """What a labeller saw and said on an item, kept for its reveal page."""

    cards: list[Card]
    verdicts: dict[str, str]
    flagged: bool


@dataclass
class LabelUIState:
    """Everything the handlers share: the lake, the queue and the blinding key."""

    data_dir: Path
    eval_set: str
    queue: LabelQueue
    key: bytes
    refresh_s: float
    clock: Callable[[], float]
    loaded_at: float
    reveals: dict[tuple[str, str], Reveal] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self, force: bool = False) -> None:
        """Re-read the lake when the snapshot is older than `refresh_s` (labels from elsewhere)."""
        if not force and self.clock() - self.loaded_at < self.refresh_s:
            return
        async with self.lock:
            if not force and self.clock() - self.loaded_at < self.refresh_s:
                return
            started = self.clock()
            snapshot = await asyncio.to_thread(load_snapshot, self.data_dir, self.eval_set)
            self.queue.replace(snapshot)
            self.loaded_at = started


STATE = web.AppKey("labelui_state", LabelUIState)


def _queue(value: Any) -> QueueName:
    return "second" if value == "second" else "new"


def _labeller(request: web.Request) -> str | None:
    raw = request.cookies.get(NAME_COOKIE)
    name = unquote(raw).strip() if raw else ""
    return name[:MAX_NAME] or None


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _frame(state: LabelUIState, labeller: str | None, progress: bool = True) -> render.Frame:
    return render.Frame(state.eval_set, labeller, state.queue.progress() if progress else None)


def _need_name(request: web.Request) -> web.Response:
    return _redirect("/labeller?then=" + quote(request.path_qs, safe=""))


def _item_path(rid: str, suffix: str = "", queue: QueueName = "new") -> str:
    q = "?queue=second" if queue == "second" else ""
    return f"/item/{quote(rid, safe='')}{suffix}{q}"


async def index(request: web.Request) -> web.StreamResponse:
    return _redirect("/next") if _labeller(request) else _need_name(request)


async def name_form(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    then = request.query.get("then", "/next")
    frame = _frame(state, _labeller(request), progress=False)
    return _html(render.name_page(frame, request[CSRF_KEY], _labeller(request), then))


async def set_name(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    name = str(form.get("name", "")).strip()
    then = str(form.get("then", "/next"))
    if not then.startswith("/") or then.startswith("//") or "\\" in then:
        then = "/next"
    if not name or len(name) > MAX_NAME or not name.isprintable():
        state = request.app[STATE]
        frame = _frame(state, None, progress=False)
        return _html(
            render.message_page(frame, "Name refused", "Use 1-64 printable characters."), 400
        )
    resp = _redirect(then)
    resp.set_cookie(
        NAME_COOKIE, quote(name, safe=""), max_age=365 * 86400, httponly=True, samesite="Strict"
    )
    return resp


async def next_item(request: web.Request) -> web.StreamResponse:
    labeller = _labeller(request)
    if labeller is None:
        return _need_name(request)
    state = request.app[STATE]
    queue = _queue(request.query.get("queue"))
    await state.refresh()
    rid = state.queue.next_item(labeller, queue)
    if rid is None:
        skipped = state.queue.skipped(labeller)
        page = render.done_page(_frame(state, labeller), queue, skipped, request[CSRF_KEY])
        return _html(page)
    return _redirect(_item_path(rid, queue=queue))


def _item_or_404(request: web.Request) -> tuple[LabelUIState, str, Any]:
    state = request.app[STATE]
    rid = request.match_info["rid"]
    item = state.queue.item(rid)
    if item is None:
        raise web.HTTPNotFound(text="no such item in this eval set")
    return state, rid, item


async def show_item(request: web.Request) -> web.StreamResponse:
    labeller = _labeller(request)
    if labeller is None:
        return _need_name(request)
    state, rid, item = _item_or_404(request)
    queue = _queue(request.query.get("queue"))
    if state.queue.has_labelled(rid, labeller):
        return _redirect(_item_path(rid, "/reveal", queue))
    other = state.queue.hold(rid, labeller)
    cards = blind(item, labeller, state.key)
    page = render.item_page(
        _frame(state, labeller),
        item,
        cards,
        csrf=request[CSRF_KEY],
        layout=layout_token(cards, labeller, rid, state.key),
        queue=queue,
        other_holder=other is not None,
    )
    return _html(page)


async def post_item(request: web.Request) -> web.StreamResponse:
    labeller = _labeller(request)
    if labeller is None:
        return _need_name(request)
    state, rid, item = _item_or_404(request)
    form = await request.post()
    queue = _queue(form.get("queue"))
    action = form.get("action", "submit")
    if action == "skip":
        state.queue.skip(rid, labeller)
        return _redirect("/next" + ("?queue=second" if queue == "second" else ""))
    frame = _frame(state, labeller)
    if state.queue.has_labelled(rid, labeller):
        msg = "You have already labelled this item; its targets were revealed to you."
        return _html(render.message_page(frame, "Already labelled", msg), 409)
    cards = blind(item, labeller, state.key)
    chosen = {c.letter: str(form.get(f"v_{c.letter}", "")) for c in cards}
    chosen = {k: v for k, v in chosen.items() if v in VERDICT_VALUES}
    reference = str(form.get("reference", ""))[:MAX_REFERENCE]
    flagged = action == "flag"
    error = None
    if form.get("layout") != layout_token(cards, labeller, rid, state.key):
        error = "The outputs of this item changed while it was open: please judge them again."
        chosen = {}
    elif not flagged and len(chosen) < len(cards):
        missing = ", ".join(c.letter for c in cards if c.letter not in chosen)
        error = f"Give every output a verdict (missing: {missing}), or skip or flag the item."
    if error:
        page = render.item_page(
            frame,
            item,
            cards,
            csrf=request[CSRF_KEY],
            layout=layout_token(cards, labeller, rid, state.key),
            queue=queue,
            error=error,
            selected=chosen,
            reference=reference,
        )
        return _html(page, 422)
    verdicts = {
        t: VERDICT_VALUES[chosen[c.letter]] for c in cards if c.letter in chosen for t in c.targets
    }
    rows = label_rows(
        rid,
        labeller,
        verdicts,
        reference=reference,
        flag_reason=str(form.get("flag_reason", "")) if flagged else None,
        targets=item.outputs,
    )
    await asyncio.to_thread(write_labels, state.data_dir, rows)
    state.queue.record(rid, labeller, tuple(verdicts), flagged=flagged)
    state.reveals[(labeller, rid)] = Reveal(cards, chosen, flagged)
    return _redirect(_item_path(rid, "/reveal", queue))


async def reveal(request: web.Request) -> web.StreamResponse:
    labeller = _labeller(request)
    if labeller is None:
        return _need_name(request)
    state, rid, item = _item_or_404(request)
    queue = _queue(request.query.get("queue"))
    frame = _frame(state, labeller)
    if not state.queue.has_labelled(rid, labeller):
        msg = "Targets are revealed only after you have labelled the item."
        return _html(render.message_page(frame, "Not labelled yet", msg), 403)
    saved = state.reveals.get((labeller, rid))
    next_url = "/next" + ("?queue=second" if queue == "second" else "")
    if saved is None:
        msg = "You labelled this item earlier; its reveal was shown then."
        return _html(render.message_page(frame, "Already labelled", msg))
    page = render.reveal_page(frame, item, saved.cards, saved.verdicts, next_url, saved.flagged)
    return _html(page)


async def clear_skips(request: web.Request) -> web.StreamResponse:
    labeller = _labeller(request)
    if labeller is None:
        return _need_name(request)
    form = await request.post()
    request.app[STATE].queue.clear_skips(labeller)
    return _redirect("/next" + ("?queue=second" if _queue(form.get("queue")) == "second" else ""))


async def progress(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    await state.refresh()
    frame = _frame(state, _labeller(request))
    assert frame.progress is not None
    return _html(render.progress_page(frame, frame.progress))


async def agreement(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    pairs = await asyncio.to_thread(load_agreement, state.data_dir, state.eval_set)
    return _html(render.agreement_page(_frame(state, _labeller(request)), pairs))


async def favicon(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    body = resources.files("analysis.labelui").joinpath(name).read_bytes()
    return web.Response(body=body, content_type=STATIC[name], charset="utf-8")


def create_labelui_app(
    data_dir: str | Path,
    eval_set: str | None = None,
    token: str | None = None,
    *,
    host: str = "127.0.0.1",
    lease_s: float = DEFAULT_LEASE_S,
    refresh_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    blinding_key: bytes | None = None,
) -> web.Application:
    """Build the app for one eval set (the newest when None); reads the lake once now."""
    check_binding(host, token)
    snapshot = open_eval_set(data_dir, eval_set)
    state = LabelUIState(
        data_dir=Path(data_dir),
        eval_set=snapshot.eval_set,
        queue=LabelQueue(snapshot, lease_s=lease_s, clock=clock),
        key=blinding_key or secrets.token_bytes(32),
        refresh_s=refresh_s,
        clock=clock,
        loaded_at=clock(),
    )
    app = web.Application(middlewares=[security_middleware(token)], client_max_size=1024**2)
    app[STATE] = state
    app.router.add_get("/", index)
    app.router.add_get("/labeller", name_form)
    app.router.add_post("/labeller", set_name)
    app.router.add_get("/next", next_item)
    app.router.add_get("/item/{rid}", show_item)
    app.router.add_post("/item/{rid}", post_item)
    app.router.add_get("/item/{rid}/reveal", reveal)
    app.router.add_post("/skips/clear", clear_skips)
    app.router.add_get("/progress", progress)
    app.router.add_get("/agreement", agreement)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/favicon.ico", favicon)
    return app
