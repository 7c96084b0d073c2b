"""The labelling app over real HTTP on loopback, reading and writing a real Parquet lake."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from html import escape as html_escape
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from analysis.labelui.agreement import kappa_or_none as cohen_kappa
from analysis.labelui.agreement import pair_agreements
from analysis.labelui.app import STATE, create_labelui_app
from analysis.labelui.blinding import letter
from analysis.labelui.queue import LabelQueue
from analysis.labelui.request_view import request_html
from analysis.labelui.server import serve
from analysis.labelui.store import load_snapshot
from proxy.errors import InputError
from proxy.lake.writer import write_rows
from shadoweval.cli import main as cli_main
from tests.analysis.labeluifix import (
    CANDIDATES,
    EVAL_SET,
    SCRIPT_PROMPT,
    TARGETS,
    build_lake,
    judgeable,
    label_rows,
)

KEY = b"k" * 32


class Clock:
    """A clock the test moves by hand (lease expiry)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return build_lake(tmp_path / "lake")


class Labeller:
    """One browser: its own cookies, following the app's forms like a person would."""

    def __init__(self, server: TestServer, name: str | None) -> None:
        self.server = server
        self.name = name
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def get(self, path: str, **kw: Any) -> tuple[aiohttp.ClientResponse, str]:
        async with self.session.get(self.url(path), allow_redirects=False, **kw) as r:
            return r, await r.text()

    async def post(
        self, path: str, data: dict[str, str], **kw: Any
    ) -> tuple[aiohttp.ClientResponse, str]:
        async with self.session.post(self.url(path), data=data, allow_redirects=False, **kw) as r:
            return r, await r.text()

    async def start(self) -> int:
        """Give the name form this labeller's name; returns the status of the answer."""
        _, html = await self.get("/labeller")
        r, _ = await self.post(
            "/labeller", {"csrf": csrf_of(html), "name": self.name or "", "then": "/next"}
        )
        return r.status

    async def next_rid(self, queue: str = "") -> str | None:
        r, _ = await self.get("/next" + (f"?queue={queue}" if queue else ""))
        if r.status == 200:
            return None
        assert r.status == 303
        m = re.match(r"/item/([^?]+)", r.headers["Location"])
        assert m
        return m.group(1)

    async def close(self) -> None:
        await self.session.close()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no csrf field in the page"
    return m.group(1)


def form_of(html: str) -> dict[str, str]:
    """The hidden fields and the output letters of an item page."""
    hidden = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', html))
    hidden["letters"] = ",".join(re.findall(r"<legend>Output ([A-Z]+)</legend>", html))
    return hidden


Factory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def make_server(lake: Path) -> AsyncIterator[Factory]:
    servers: list[TestServer] = []

    async def make(**kw: Any) -> TestServer:
        kw.setdefault("blinding_key", KEY)
        server = TestServer(create_labelui_app(lake, **kw), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield make
    for s in servers:
        await s.close()


@pytest.fixture
async def people(make_server: Factory) -> AsyncIterator[Callable[..., Awaitable[Labeller]]]:
    made: list[Labeller] = []
    server: list[TestServer] = []

    async def person(name: str | None, **kw: Any) -> Labeller:
        if not server:
            server.append(await make_server(**kw))
        p = Labeller(server[0], name)
        made.append(p)
        if name is not None:
            assert await p.start() == 303
        return p

    yield person
    for p in made:
        await p.close()


async def submit(p: Labeller, rid: str, verdicts: str, **extra: str) -> aiohttp.ClientResponse:
    """Open an item and submit one verdict per output (c/i/p, in letter order)."""
    r, html = await p.get(f"/item/{rid}")
    assert r.status == 200, html
    form = form_of(html)
    letters = form.pop("letters").split(",")
    words = {"c": "correct", "i": "incorrect", "p": "partly"}
    data = {**form, "action": "submit", **extra}
    for lt, v in zip(letters, verdicts, strict=False):
        data[f"v_{lt}"] = words[v]
    resp, _ = await p.post(f"/item/{rid}", data)
    return resp


# -- start-up and access -----------------------------------------------------------------


def test_refuses_to_bind_beyond_loopback_without_token(lake: Path, capsys: Any) -> None:
    with pytest.raises(InputError, match="without a token"):
        create_labelui_app(lake, host="0.0.0.0")
    create_labelui_app(lake, host="0.0.0.0", token="s3cret")  # with a token it starts
    with pytest.raises(InputError, match="no eval set named"):
        create_labelui_app(lake, "nope")
    assert cli_main(["label", "--data", str(lake), "--host", "0.0.0.0"]) == 2
    assert "refusing to bind '0.0.0.0' without a token" in capsys.readouterr().err
    assert cli_main(["label", "--data", str(lake / "missing")]) == 2
    assert "no lake at" in capsys.readouterr().err


async def test_token_required_when_set(make_server: Factory) -> None:
    server = await make_server(token="s3cret")
    p = Labeller(server, None)
    try:
        r, _ = await p.get("/next")
        assert r.status == 401
        r, _ = await p.get("/progress?token=wrong")
        assert r.status == 401
        r, _ = await p.get("/progress?token=s3cret")
        assert r.status == 303 and r.headers["Location"] == "/progress"
        r, html = await p.get("/progress")  # the cookie now carries it
        assert r.status == 200 and "Progress" in html
        bearer = {"Authorization": "Bearer s3cret"}
        async with (
            aiohttp.ClientSession() as s,
            s.get(server.make_url("/progress"), headers=bearer) as r2,
        ):
            assert r2.status == 200
    finally:
        await p.close()


async def test_foreign_host_and_forged_posts_refused(people: Any) -> None:
    p = await people("ana")
    r, _ = await p.get("/progress", headers={"Host": "evil.example:80"})
    assert r.status == 403
    rid = await p.next_rid()
    _, html = await p.get(f"/item/{rid}")
    form = form_of(html)
    form.pop("letters")
    r, _ = await p.post(f"/item/{rid}", {**form, "csrf": "x" * 32, "action": "flag"})
    assert r.status == 403
    r, _ = await p.post(
        f"/item/{rid}", {**form, "action": "flag"}, headers={"Origin": "http://evil.example"}
    )
    assert r.status == 403
    assert label_rows(p.server.app[STATE].data_dir) == []
    r, _ = await p.get("/next")
    assert "Content-Security-Policy" in r.headers


async def test_name_is_asked_once(people: Any) -> None:
    p = await people(None)
    r, _ = await p.get("/")
    assert r.status == 303 and r.headers["Location"].startswith("/labeller")
    assert await p.start() == 400  # an empty name is refused
    r, _ = await p.get("/next")
    assert r.status == 303 and r.headers["Location"].startswith("/labeller")
    p.name = "Zoë <admin>"
    assert await p.start() == 303
    r, _ = await p.get("/next")
    assert r.status == 303 and r.headers["Location"].startswith("/item/")
    _, html = await p.get(r.headers["Location"])
    assert "Zoë &lt;admin&gt;" in html and "<admin>" not in html
    for then in ("//evil.example/x", "/\\evil.example", "https://evil.example"):
        r, _ = await p.post("/labeller", {"csrf": csrf_of(html), "name": "Zoë", "then": then})
        assert r.status == 303 and r.headers["Location"] == "/next"


# -- blinding and escaping -------------------------------------------------------------------


async def test_item_page_names_no_target_and_order_is_stable(people: Any) -> None:
    ana = await people("ana")
    ben = await people("ben")
    orders: dict[str, list[list[str]]] = {"ana": [], "ben": []}
    state = ana.server.app[STATE]
    for rid in ("rid-0", "rid-1", "rid-2", "rid-3", "rid-4", "rid-sys"):
        for p in (ana, ben):
            _, html = await p.get(f"/item/{rid}")
            _, again = await p.get(f"/item/{rid}")
            assert html == again  # stable on reload
            for name in TARGETS:
                assert name not in html, f"{name} leaked into the page"
            assert "-model" not in html and "gpt-prod-x" not in html
            shown = html.split('<section class="outputs">')[1]
            texts = re.findall(r'<div class="text">([^<]*)</div>', shown)
            orders[str(p.name)].append(texts)
        state.queue.release(rid, "ana")
        state.queue.release(rid, "ben")
    # Identical outputs are shown once: rid-sys has three targets but two distinct answers.
    assert len(orders["ana"][5]) == 0  # JSON outputs are pretty-printed, not plain text
    _, html = await ana.get("/item/rid-sys")
    assert form_of(html)["letters"] == "A,B"
    # The order differs between labellers on some items and between items for one labeller.
    assert orders["ana"][:5] != orders["ben"][:5]
    firsts = {o[0].split(" ")[0] for o in orders["ana"][:5]}
    assert len(firsts) > 1


async def test_script_in_prompt_and_output_is_text(people: Any) -> None:
    p = await people("ana")
    r, html = await p.get("/item/rid-script")
    assert r.status == 200
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold" not in html
    assert html_escape(SCRIPT_PROMPT) in html
    assert "&lt;/textarea&gt;&lt;script&gt;alert(3)" in html
    assert html.count("<script") == 1  # ours, from /static
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]


def test_request_view_folds_system_prompt_and_pretty_prints_json() -> None:
    body = json.dumps(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [{"type": "text", "text": '{"a": [1, 2]}'}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"function": {"name": "lookup", "arguments": '{"id": 7, "x": "<y>"}'}}
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://i/x.png"}}],
                },
            ],
            "temperature": 0,
        }
    )
    html = request_html(body)
    assert '<details class="msg role-system"><summary>system prompt</summary>' in html
    assert "{\n  &quot;a&quot;: [\n    1,\n    2\n  ]\n}" in html
    assert "lookup" in html and "&lt;y&gt;" in html and "[image: https://i/x.png]" in html
    assert "Request parameters" in html and "&quot;temperature&quot;: 0" in html
    assert "&quot;m&quot;" not in html  # the model is left out
    assert "not stored" in request_html(None)
    assert "(no prompt" in request_html(json.dumps({"input": None}))
    assert "hello" in request_html(json.dumps({"prompt": "hello"}))
    assert [letter(i) for i in (0, 25, 26, 27)] == ["A", "Z", "AA", "AB"]


# -- labels in the lake ----------------------------------------------------------------------


async def test_submit_writes_human_verdicts_and_reference_then_reveals(people: Any) -> None:
    p = await people("ana")
    data_dir = p.server.app[STATE].data_dir
    r = await submit(p, "rid-sys", "ci", reference='{"queue": "billing"}')
    assert r.status == 303 and r.headers["Location"] == "/item/rid-sys/reveal"
    rows = label_rows(data_dir)
    verdicts = {row["target"]: json.loads(row["value"]) for row in rows if row["kind"] == "verdict"}
    assert set(verdicts) == set(TARGETS)
    # production and cand-deep gave the same text: one card, one verdict for both.
    assert verdicts["production"] == verdicts["cand-deep"]
    assert {verdicts["production"], verdicts["cand-swift"]} == {True, False}
    assert all(row["labeller"] == "ana" and row["source"] == "human" for row in rows)
    ref = [row for row in rows if row["kind"] == "reference"]
    assert len(ref) == 1 and ref[0]["target"] is None
    assert json.loads(ref[0]["value"]) == '{"queue": "billing"}'
    _, html = await p.get("/item/rid-sys/reveal")
    for name in TARGETS:
        assert name in html
    # Once revealed, the item cannot be judged again by the same labeller.
    r, _ = await p.get("/item/rid-sys")
    assert r.status == 303 and r.headers["Location"].endswith("/reveal")
    r = await submit_raw(p, "rid-sys")
    assert r.status == 409
    assert len(label_rows(data_dir)) == len(rows)


async def submit_raw(p: Labeller, rid: str) -> aiohttp.ClientResponse:
    _, html = await p.get("/labeller")
    resp, _ = await p.post(f"/item/{rid}", {"csrf": csrf_of(html), "action": "submit"})
    return resp


async def test_incomplete_submission_is_refused_and_nothing_written(people: Any) -> None:
    p = await people("ana")
    r, html = await p.get("/item/rid-0")
    form = form_of(html)
    letters = form.pop("letters").split(",")
    data = {**form, "action": "submit", f"v_{letters[0]}": "partly"}
    resp, page = await p.post("/item/rid-0", data)
    assert resp.status == 422
    assert "missing: " + ", ".join(letters[1:]) in page
    assert 'value="partly" checked' in page  # the choice made is kept
    assert label_rows(p.server.app[STATE].data_dir) == []
    r, _ = await p.get("/item/rid-0/reveal")
    assert r.status == 403  # no reveal before labelling


async def test_partly_is_a_half_score(people: Any) -> None:
    p = await people("ana")
    assert (await submit(p, "rid-1", "ppp")).status == 303
    values = {json.loads(r["value"]) for r in label_rows(p.server.app[STATE].data_dir)}
    assert values == {0.5}


async def test_flag_and_skip(people: Any) -> None:
    p = await people("ana")
    data_dir = p.server.app[STATE].data_dir
    first = await p.next_rid()
    assert first is not None
    _, html = await p.get(f"/item/{first}")
    form = form_of(html)
    form.pop("letters")
    r, _ = await p.post(f"/item/{first}", {**form, "action": "skip"})
    assert r.status == 303 and r.headers["Location"] == "/next"
    second = await p.next_rid()
    assert second not in (None, first)
    _, html = await p.get(f"/item/{second}")
    form = form_of(html)
    form.pop("letters")
    r, _ = await p.post(
        f"/item/{second}", {**form, "action": "flag", "flag_reason": "two questions in one"}
    )
    assert r.status == 303
    rows = label_rows(data_dir)
    assert len(rows) == 1 and rows[0]["kind"] == "outcome" and rows[0]["target"] is None
    assert json.loads(rows[0]["value"]) == {"flag": True, "reason": "two questions in one"}
    # Neither comes back to this labeller; the flagged one comes back to nobody.
    seen = set()
    while (rid := await p.next_rid()) is not None:
        seen.add(rid)
        assert (await submit(p, rid, "ccc")).status == 303
    assert first not in seen and second not in seen and "rid-failed" not in seen
    _, html = await p.get("/next")
    assert "You skipped 1" in html
    r, _ = await p.post("/skips/clear", {"csrf": csrf_of(html)})
    assert await p.next_rid() == first
    ben = await people("ben")
    assert await ben.next_rid() == first  # ana holds it, but it is the only one left
    _, html = await p.get("/progress")
    flagged_row = re.search(r'<tr class="total"><td>\(all\)</td>((?:<td>\d+</td>)+)</tr>', html)
    assert flagged_row
    cells = [int(x) for x in re.findall(r"\d+", flagged_row.group(1))]
    assert cells == [8, 5, 1, 1, 1, 1]  # items, judged, flagged, open now, remaining, no outputs


async def test_two_labellers_get_different_items_until_none_remain(people: Any) -> None:
    clock = Clock()
    ana = await people("ana", clock=clock, lease_s=60.0)
    ben = await people("ben")
    a1, b1 = await ana.next_rid(), await ben.next_rid()
    assert a1 and b1 and a1 != b1
    assert await ana.next_rid() == a1  # a reload keeps the same item
    # After the leases run out, ana's item (first in the order) is free again for ben.
    clock.now += 61
    assert await ben.next_rid() == a1
    assert await ana.next_rid() == b1


def test_queue_leases_with_a_clock(lake: Path) -> None:
    clock = Clock()
    q = LabelQueue(load_snapshot(lake, EVAL_SET), lease_s=60, clock=clock)
    got = [q.next_item(f"p{i}") for i in range(7)]
    served = [rid for rid in got if rid is not None]
    assert len(set(served)) == 7  # 7 judgeable items, 7 labellers
    assert q.next_item("p7") in served  # nothing free: one held by somebody else
    assert q.holder(served[0]) == "p0"
    clock.now += 61
    assert q.holder(served[0]) is None
    assert q.next_item("p8") == served[0]
    q.record(served[1], "p1", tuple(judgeable(served[1])), flagged=False)
    assert q.is_judged(served[1]) and not q.eligible(served[1], "p9")
    assert q.eligible(served[1], "p9", "second") and not q.eligible(served[1], "p1", "second")
    # A fresh snapshot from the lake that lacks the write keeps it (the journal).
    q.replace(load_snapshot(lake, EVAL_SET))
    assert q.is_judged(served[1])


async def test_labels_written_elsewhere_are_picked_up(people: Any) -> None:
    p = await people("ana", refresh_s=0.0)
    data_dir = p.server.app[STATE].data_dir
    done = [
        (rid, t, "human") for rid in ("rid-0", "rid-1", "rid-2", "rid-3") for t in judgeable(rid)
    ]
    # A judge's verdicts are not human work: rid-4 stays open.
    judged = [("rid-4", t, "judge") for t in judgeable("rid-4")]
    rows = [
        {
            "label_id": f"x{i}",
            "request_id": rid,
            "kind": "verdict",
            "target": t,
            "value": "true",
            "labeller": "importer",
            "source": source,
            "created_at": datetime.now(UTC),
        }
        for i, (rid, t, source) in enumerate(done + judged)
    ]
    write_rows(data_dir, "labels", rows, kind="test")
    served = set()
    while (rid := await p.next_rid()) is not None:
        served.add(rid)
        assert (await submit(p, rid, "iii")).status == 303
    assert served == {"rid-4", "rid-sys", "rid-script"}


# -- agreement -------------------------------------------------------------------------------


def test_cohen_kappa_hand_computed() -> None:
    # 50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4.
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([1, 1], [1, 1]) is None  # p_e = 1: undefined
    assert cohen_kappa([1, 0], [0, 1]) == pytest.approx(-1.0)
    assert cohen_kappa([], []) is None
    # Three categories: p_o = 5/6; marginals a (2,2,2), b (3,1,2): p_e = (6+2+4)/36 = 1/3;
    # kappa = (5/6 - 1/3) / (2/3) = 0.75.
    assert cohen_kappa([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 2, 2]) == pytest.approx(0.75)
    pairs = pair_agreements({"x": {("r", "t"): 1.0}, "y": {("r", "u"): 1.0}})
    assert pairs == []


async def test_agreement_page_shows_kappa_per_pair(people: Any) -> None:
    ana = await people("ana")
    ben = await people("ben")
    _, html = await ana.get("/agreement")
    assert "No output has verdicts from two labellers" in html
    # ana judges 2 items; ben gives second opinions on them.
    for rid in ("rid-0", "rid-1"):
        assert (await submit(ana, rid, "cii")).status == 303
    second = []
    while (rid := await ben.next_rid("second")) is not None:
        second.append(rid)
        _, html = await ben.get(f"/item/{rid}?queue=second")
        assert "Second opinion" in html
        assert (await submit(ben, rid, "cci")).status == 303
    assert sorted(second) == ["rid-0", "rid-1"]
    # Recompute the expected kappa from the lake rows with the hand-checked function.
    rows = [r for r in label_rows(ana.server.app[STATE].data_dir) if r["kind"] == "verdict"]
    by = {(r["labeller"], r["request_id"], r["target"]): json.loads(r["value"]) for r in rows}
    keys = sorted({(rid, t) for _, rid, t in by})
    expected = cohen_kappa([by[("ana", *k)] for k in keys], [by[("ben", *k)] for k in keys])
    _, html = await ana.get("/agreement")
    assert re.search(r"<td>ana</td><td>ben</td><td>2</td><td>6</td>", html)
    shown = "undefined" if expected is None else f"{expected:.2f}"
    assert f'<td class="kappa">{shown}</td>' in html


# -- the command -----------------------------------------------------------------------------


async def test_serve_prints_address_and_stops(lake: Path) -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(
            lake,
            eval_set=None,
            host="127.0.0.1",
            port=0,
            token="t0k",
            lease_s=60,
            out=out,
            stop=lambda: stop,
        )
    )
    for _ in range(200):
        if out.getvalue():
            break
        await asyncio.sleep(0.02)
    line = out.getvalue()
    assert f"eval set {EVAL_SET!r} (8 items)" in line
    url = re.search(r"http://\S+", line)
    assert url and url.group(0).endswith("/?token=t0k")
    jar = aiohttp.CookieJar(unsafe=True)  # keeps the cookie set for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as s, s.get(url.group(0)) as r:
        assert r.status == 200 and "Who is labelling" in await r.text()
    stop.set()
    await asyncio.wait_for(task, 10)
    assert not any(c in line for c in CANDIDATES)
