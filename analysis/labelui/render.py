"""The labelling pages as server-rendered HTML: one layout file, small functions per page.

Every value that comes from the lake or a user goes through `esc` (request_view.py);
functions here return HTML that is already safe. The item page names no target anywhere
(text, attributes, form fields, script data): outputs are letters, and the mapping is
kept on the server until the reveal. The page works without JavaScript (plain form
posts); labelui.js adds the keyboard shortcuts listed on the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from string import Template
from urllib.parse import quote

from analysis.labelui.agreement import PairAgreement
from analysis.labelui.blinding import Card
from analysis.labelui.queue import Progress, QueueName, Tally
from analysis.labelui.request_view import esc, request_html, text_block
from analysis.labelui.store import Item

VERDICTS = (("correct", "Correct", "1"), ("incorrect", "Incorrect", "2"), ("partly", "Partly", "3"))
VERDICT_WORDS = {"correct": "correct", "incorrect": "incorrect", "partly": "partly right (0.5)"}
SHORTCUTS = (
    ("1 / 2 / 3", "correct / incorrect / partly right (0.5) for the focused output"),
    ("j or ↓", "next output"),
    ("k or ↑", "previous output"),
    ("r", "write a reference answer (Esc leaves the field, Ctrl+Enter submits)"),
    ("s", "skip this item"),
    ("f", "flag this item (type a reason, Enter flags it)"),
    ("Enter", "submit, once every output has a verdict"),
    ("Enter or n", "on the reveal: next item"),
    ("?", "show or hide this list"),
)


@dataclass(frozen=True)
class Frame:
    """What every page's header shows."""

    eval_set: str
    labeller: str | None
    progress: Progress | None = None


def _layout() -> Template:
    text = resources.files("analysis.labelui").joinpath("layout.html").read_text("utf-8")
    return Template(text)


def page(title: str, body: str, frame: Frame, kind: str = "page") -> str:
    """A whole HTML document around an already-safe body."""
    return _layout().substitute(title=esc(title), page=esc(kind), header=_header(frame), body=body)


def _header(frame: Frame) -> str:
    parts = [f'<span class="evalset">eval set <b>{esc(frame.eval_set)}</b></span>']
    if frame.progress is not None:
        t = frame.progress.total
        parts.append(
            f'<span class="summary" id="summary">{t.judged + t.flagged} of {t.items} done</span>'
        )
    parts.append(
        '<nav><a href="/next">Label</a><a href="/next?queue=second">Second opinions</a>'
        '<a href="/progress">Progress</a><a href="/agreement">Agreement</a></nav>'
    )
    if frame.labeller:
        parts.append(
            f'<span class="who">labeller <b id="labeller">{esc(frame.labeller)}</b> '
            '<a href="/labeller">change</a></span>'
        )
    return "".join(parts)


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'


def name_page(frame: Frame, csrf: str, current: str | None, then: str) -> str:
    body = (
        '<section class="card narrow"><h1>Who is labelling?</h1>'
        "<p>Your name is written with every label, so the team can compare labellers. "
        "It is asked once and kept in this browser.</p>"
        '<form method="post" action="/labeller" class="name-form">'
        + _hidden("csrf", csrf)
        + _hidden("then", then)
        + '<input id="name" name="name" required maxlength="64" autocomplete="name" '
        f'autofocus value="{esc(current or "")}">'
        '<button type="submit">Start</button></form></section>'
    )
    return page("Your name", body, frame, "name")


def _card_html(card: Card, selected: str | None) -> str:
    radios = "".join(
        f'<label class="v v-{value}"><input type="radio" name="v_{esc(card.letter)}" '
        f'value="{value}"{" checked" if selected == value else ""}> {word} <kbd>{key}</kbd>'
        "</label>"
        for value, word, key in VERDICTS
    )
    note = ""
    if card.finish_reason and card.finish_reason not in ("stop", "tool_calls"):
        note = f'<p class="note">ended early: {esc(card.finish_reason)}</p>'
    return (
        f'<fieldset class="output" id="out-{esc(card.letter)}" tabindex="-1">'
        f"<legend>Output {esc(card.letter)}</legend>{text_block(card.text)}{note}"
        f'<div class="verdicts">{radios}</div></fieldset>'
    )


def _shortcuts() -> str:
    rows = "".join(f"<dt><kbd>{esc(k)}</kbd></dt><dd>{esc(v)}</dd>" for k, v in SHORTCUTS)
    return f'<aside class="shortcuts" id="shortcuts"><h2>Keyboard</h2><dl>{rows}</dl></aside>'


def _stratum_line(progress: Progress | None, stratum: str) -> str:
    if progress is None:
        return ""
    for t in progress.strata:
        if t.stratum == stratum:
            return f" · {t.judged + t.flagged} of {t.items} done in this stratum"
    return ""


def item_page(
    frame: Frame,
    item: Item,
    cards: Sequence[Card],
    *,
    csrf: str,
    layout: str,
    queue: QueueName,
    other_holder: bool = False,
    error: str | None = None,
    selected: Mapping[str, str] | None = None,
    reference: str = "",
) -> str:
    """The labelling page of one item: the request, then the blinded outputs to judge."""
    selected = selected or {}
    notes = []
    if queue == "second":
        notes.append(
            '<p class="note">Second opinion: someone else has judged this item. '
            "Judge it on its own; their verdicts are not shown.</p>"
        )
    if other_holder:
        notes.append('<p class="note">Another labeller has this item open too.</p>')
    if error:
        notes.append(f'<p class="error" role="alert">{esc(error)}</p>')
    action = f"/item/{quote(item.request_id, safe='')}"
    body = (
        '<div class="layout"><div class="work">'
        + "".join(notes)
        + '<section class="request card"><h2>Request</h2>'
        f'<p class="meta">stratum <b>{esc(item.stratum)}</b>'
        f"{_stratum_line(frame.progress, item.stratum)}</p>"
        f"{request_html(item.body)}</section>"
        f'<form method="post" action="{esc(action)}" id="label-form">'
        + _hidden("csrf", csrf)
        + _hidden("layout", layout)
        + _hidden("queue", queue)
        + '<section class="outputs">'
        + (
            "".join(_card_html(c, selected.get(c.letter)) for c in cards)
            or '<p class="muted">Every call for this item failed: there is no output to judge.</p>'
        )
        + "</section>"
        '<section class="card extra"><label for="reference">Reference answer (optional) '
        '<kbd>r</kbd></label><textarea id="reference" name="reference" rows="3">'
        f"{esc(reference)}</textarea>"
        '<div class="flag-row" id="flag-row"><label for="flag_reason">Flag reason '
        '<kbd>f</kbd></label><input id="flag_reason" name="flag_reason" maxlength="500" '
        'placeholder="e.g. unreadable prompt, personal data, no right answer"></div></section>'
        '<p class="error" id="client-error" role="alert" hidden></p>'
        '<div class="actions">'
        '<button type="submit" name="action" value="submit" id="submit" class="primary">'
        "Submit <kbd>Enter</kbd></button>"
        '<button type="submit" name="action" value="skip" id="skip">Skip <kbd>s</kbd></button>'
        '<button type="submit" name="action" value="flag" id="flag">Flag <kbd>f</kbd></button>'
        "</div></form></div>" + _shortcuts() + "</div>"
    )
    return page("Label", body, frame, "item")


def reveal_page(
    frame: Frame,
    item: Item,
    cards: Sequence[Card],
    verdicts: Mapping[str, str],
    next_url: str,
    flagged: bool = False,
) -> str:
    """After a submission: which output came from which target, with the verdicts given."""
    rows = "".join(
        f'<tr><td>Output {esc(c.letter)}</td><td class="target">{esc(", ".join(c.targets))}</td>'
        f"<td>{esc(VERDICT_WORDS.get(verdicts.get(c.letter, ''), '-'))}</td></tr>"
        for c in cards
    )
    status = "Flagged. " if flagged else "Saved. "
    body = (
        f'<section class="card reveal"><h1>{status}Here is who answered what</h1>'
        f'<p class="meta">request <code>{esc(item.request_id)}</code> · stratum '
        f"<b>{esc(item.stratum)}</b></p>"
        '<table class="grid" id="reveal"><thead><tr><th>output</th><th>target</th>'
        f"<th>your verdict</th></tr></thead><tbody>{rows}</tbody></table>"
        f'<p><a class="button primary" id="next" href="{esc(next_url)}">Next item '
        "<kbd>Enter</kbd></a></p></section>"
    )
    return page("Revealed", body, frame, "reveal")


def done_page(frame: Frame, queue: QueueName, skipped: int, csrf: str) -> str:
    what = "second opinions" if queue == "second" else "items"
    body = f'<section class="card narrow"><h1>No {what} left for you</h1>'
    if skipped:
        body += (
            f"<p>You skipped {skipped}. "
            '<form method="post" action="/skips/clear" class="inline">'
            + _hidden("csrf", csrf)
            + _hidden("queue", queue)
            + '<button type="submit">Show skipped items again</button></form></p>'
        )
    body += '<p><a href="/progress">See progress</a></p></section>'
    return page("Done", body, frame, "done")


def _tally_row(t: Tally, css: str = "") -> str:
    cells = (t.items, t.judged, t.flagged, t.in_progress, t.remaining, t.no_outputs)
    row = f'<tr class="{css}">' if css else "<tr>"
    return f"{row}<td>{esc(t.stratum)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def progress_page(frame: Frame, progress: Progress) -> str:
    rows = "".join(_tally_row(t) for t in progress.strata) + _tally_row(progress.total, "total")
    body = (
        '<section class="card"><h1>Progress</h1>'
        '<table class="grid" id="progress"><thead><tr><th>stratum</th><th>items</th>'
        "<th>judged</th><th>flagged</th><th>open now</th><th>remaining</th>"
        f"<th>no outputs</th></tr></thead><tbody>{rows}</tbody></table>"
        '<p class="muted">Judged: every output has a human verdict. Open now: leased to a '
        "labeller. No outputs: every call failed, nothing to judge.</p></section>"
    )
    return page("Progress", body, frame, "progress")


def _kappa(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2f}"


def agreement_page(frame: Frame, pairs: Sequence[PairAgreement]) -> str:
    if pairs:
        rows = "".join(
            f"<tr><td>{esc(p.a)}</td><td>{esc(p.b)}</td><td>{p.items}</td><td>{p.n}</td>"
            f'<td>{p.observed:.0%}</td><td class="kappa">{_kappa(p.kappa)}</td></tr>'
            for p in pairs
        )
        table = (
            '<table class="grid" id="agreement"><thead><tr><th>labeller</th><th>labeller</th>'
            "<th>items</th><th>outputs</th><th>same verdict</th><th>Cohen's κ</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>"
        )
    else:
        table = (
            '<p id="agreement-empty">No output has verdicts from two labellers yet. Use '
            '<a href="/next?queue=second">Second opinions</a> to judge items others have '
            "judged.</p>"
        )
    body = (
        '<section class="card"><h1>Agreement between labellers</h1>'
        f'{table}<p class="muted">Each labeller\'s newest verdict per output. κ corrects '
        "the share of equal verdicts for agreement by chance: above 0.8 is strong, below 0.6 "
        "means the labelling guidelines need work before the labels are trusted. With few "
        "outputs in common κ is imprecise.</p></section>"
    )
    return page("Agreement", body, frame, "agreement")


def message_page(frame: Frame, title: str, text: str) -> str:
    body = f'<section class="card narrow"><h1>{esc(title)}</h1><p>{esc(text)}</p></section>'
    return page(title, body, frame, "message")
