"""The labelling page in a real browser: Debian's headless Chromium driven by Playwright.

The app runs in a background thread with its own event loop (the sync Playwright API
cannot run inside a running loop). Set SHADOWEVAL_WRITE_SCREENSHOT=1 to refresh
docs/labelui.png from the keyboard test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis.labelui.app import create_labelui_app
from analysis.labelui.server import start
from tests.analysis.labeluifix import SCRIPT_PROMPT, TARGETS, build_lake, judgeable, label_rows

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "labelui.png"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="no Chromium at /usr/bin/chromium (install Debian's `chromium` package)",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


class ServerThread:
    """The labelling app served from its own thread and event loop on a free port."""

    def __init__(self, data_dir: Path, **kw: Any) -> None:
        self.data_dir = data_dir
        self.kw = kw
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: Any = None
        self.port = 0

    async def _start(self) -> None:
        app = create_labelui_app(self.data_dir, **self.kw)
        self.runner, self.port = await start(app, "127.0.0.1", 0)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(build_lake(tmp_path / "lake")) as s:
        yield s


def open_as(browser: Any, server: ServerThread, name: str) -> Any:
    """A fresh browser context (its own cookies) that has given its name."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(server.url("/"))
    page.fill("#name", name)
    page.press("#name", "Enter")
    page.wait_for_url(re.compile(r"/item/"))
    return page


def rid_of(page: Any) -> str:
    m = re.search(r"/item/([^/?]+)", page.url)
    assert m, page.url
    return m.group(1)


def judge_by_keyboard(page: Any, keys: str) -> None:
    """One key per output: the focus moves on to the next output without a verdict."""
    for key in keys:
        page.keyboard.press(key)


def test_label_items_by_keyboard_only(browser: Any, server: ServerThread, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(server.url("/"))
    # The name field takes the focus by itself (autofocus), which Chromium applies at a
    # rendering step after the load event: wait for it, as a user sees the caret, then type.
    page.wait_for_function("document.activeElement && document.activeElement.id === 'name'")
    page.keyboard.type("Kim")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/item/"))
    assert page.inner_text("#labeller") == "Kim"
    assert "correct / incorrect" in page.inner_text("#shortcuts")
    done: dict[str, int] = {}
    skipped = flagged = ""
    for step in range(5):
        rid = rid_of(page)
        n = page.locator("fieldset.output").count()
        if step == 1:  # skip this one
            skipped = rid
            page.keyboard.press("s")
            page.wait_for_url(lambda url, r=rid: r not in url)
            continue
        if step == 2:  # flag this one, with a reason
            flagged = rid
            page.keyboard.press("f")
            page.keyboard.type("ambiguous ticket")
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r"/reveal"))
            page.keyboard.press("Enter")
            page.wait_for_url(lambda url, r=rid: "/item/" in url and r not in url)
            continue
        # Enter before every output is judged is refused on the page.
        page.keyboard.press("1")
        if n > 1:
            page.keyboard.press("Enter")
            assert page.is_visible("#client-error")
            assert "/reveal" not in page.url
        judge_by_keyboard(page, "2" * (n - 1))
        if step == 0:
            page.keyboard.press("r")
            page.keyboard.type("billing")
            page.keyboard.press("Escape")
            page.screenshot(path=str(tmp_path / "labelui.png"))
        if step == 3 and n > 1:  # go back up one output and change its verdict
            page.keyboard.press("ArrowUp")
            page.keyboard.press("3")
            page.keyboard.press("j")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/reveal"))
        reveal = page.inner_text("#reveal")
        assert all(t in reveal for t in judgeable(rid))
        done[rid] = len(judgeable(rid))
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url, r=rid: "/item/" in url and r not in url)
    if os.environ.get("SHADOWEVAL_WRITE_SCREENSHOT") == "1":
        shot = open_as(browser, server, "Alex")
        shot.goto(server.url("/item/rid-sys"))
        shot.keyboard.press("1")
        shot.screenshot(path=str(SCREENSHOT))
        shot.context.close()
    assert (tmp_path / "labelui.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    context.close()

    rows = label_rows(server.data_dir)
    assert rows and all(r["labeller"] == "Kim" and r["source"] == "human" for r in rows)
    verdicts = [r for r in rows if r["kind"] == "verdict"]
    assert len(verdicts) == sum(done.values())
    assert {r["request_id"] for r in verdicts} == set(done)
    assert skipped not in {r["request_id"] for r in rows}
    refs = [r for r in rows if r["kind"] == "reference"]
    assert len(refs) == 1 and json.loads(refs[0]["value"]) == "billing"
    flags = [r for r in rows if r["kind"] == "outcome"]
    assert [(f["request_id"], json.loads(f["value"])) for f in flags] == [
        (flagged, {"flag": True, "reason": "ambiguous ticket"})
    ]
    values = {json.loads(r["value"]) for r in verdicts}
    assert True in values and False in values


def test_no_target_name_before_submit(browser: Any, server: ServerThread) -> None:
    page = open_as(browser, server, "Lee")
    for _ in range(3):
        rid = rid_of(page)
        html = page.content()
        text = page.inner_text("body")
        for name in TARGETS:
            assert name not in html and name not in text, f"{name} visible before submit"
        judge_by_keyboard(page, "1" * page.locator("fieldset.output").count())
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/reveal"))
        shown = page.inner_text("#reveal")
        assert all(t in shown for t in judgeable(rid))
        page.keyboard.press("n")
        page.wait_for_url(lambda url, r=rid: "/item/" in url and r not in url)
    page.context.close()


def test_script_in_a_prompt_shows_as_text(browser: Any, server: ServerThread) -> None:
    page = open_as(browser, server, "Ana")
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(server.url("/item/rid-script"))
    assert SCRIPT_PROMPT in page.inner_text(".request")
    outputs = page.inner_text(".outputs")
    assert "<img src=x onerror=alert(2)>" in outputs
    assert "</textarea><script>alert(3)</script>" in outputs
    assert page.locator("script").count() == 1  # only /static/labelui.js
    assert page.locator(".outputs img, .request img, .request .msg b").count() == 0
    page.wait_for_timeout(300)
    assert dialogs == []
    page.context.close()


def test_two_labellers_at_once_get_different_items(browser: Any, server: ServerThread) -> None:
    a = open_as(browser, server, "Ana")
    b = open_as(browser, server, "Ben")
    seen_a, seen_b = [rid_of(a)], [rid_of(b)]
    assert seen_a[0] != seen_b[0]
    for _ in range(2):
        for page, seen in ((a, seen_a), (b, seen_b)):
            rid = seen[-1]
            judge_by_keyboard(page, "2" * page.locator("fieldset.output").count())
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r"/reveal"))
            page.keyboard.press("Enter")
            page.wait_for_url(lambda url, r=rid: "/item/" in url and r not in url)
            seen.append(rid_of(page))
    assert not set(seen_a) & set(seen_b)
    rows = label_rows(server.data_dir)
    by: dict[str, set[str]] = {r["labeller"]: set() for r in rows}
    for r in rows:
        by[r["labeller"]].add(r["request_id"])
    assert by["Ana"] == set(seen_a[:2]) and by["Ben"] == set(seen_b[:2])
    a.context.close()
    b.context.close()
