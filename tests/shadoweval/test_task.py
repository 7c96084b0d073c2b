"""The bundled ticket-routing task: deterministic, varied, well-formed, and its truth findable."""

from __future__ import annotations

import math
import string
from collections import Counter

import pytest

from shadoweval.simulator.task import (
    CHANNEL_SHARE,
    CHANNELS,
    CONFUSIONS,
    LANGUAGE_SHARE,
    LANGUAGES,
    LENGTH_SHARE,
    LENGTHS,
    QUEUE_SHARE,
    QUEUES,
    SYSTEM_PROMPT,
    extract_queue,
    load_task,
    phrasebook,
    simulated_label,
    truth_for,
    user_text,
)

SLOTS = {
    "order", "amount", "date", "product", "plan", "device", "code", "carrier",
    "days", "last4", "company", "agent", "name", "email",
}  # fmt: skip


def test_same_seed_same_tickets_other_seed_other_tickets() -> None:
    a = load_task(0, 3000)
    load_task.cache_clear()
    b = load_task(0, 3000)
    assert a is not b
    assert [t.text for t in a.tickets] == [t.text for t in b.tickets]
    assert [t.queue for t in a.tickets] == [t.queue for t in b.tickets]
    c = load_task(1, 3000)
    assert len({t.text for t in a.tickets} & {t.text for t in c.tickets}) < 30


def test_thousands_of_distinct_well_formed_tickets() -> None:
    task = load_task(0, 3000)
    assert len(task) == 3000
    assert len({t.text for t in task.tickets}) == 3000
    assert len({t.ticket_id for t in task.tickets}) == 3000
    for t in task.tickets:
        assert "{" not in t.text and "}" not in t.text, t.text
        assert t.queue in QUEUES and t.language in LANGUAGES
        assert t.channel in CHANNELS and t.length in LENGTHS
        assert t.tags == (f"lang:{t.language}", f"channel:{t.channel}", f"length:{t.length}")


@pytest.mark.parametrize(
    ("attr", "values", "shares"),
    [
        ("queue", QUEUES, QUEUE_SHARE),
        ("language", LANGUAGES, LANGUAGE_SHARE),
        ("channel", CHANNELS, CHANNEL_SHARE),
        ("length", LENGTHS, LENGTH_SHARE),
    ],
)
def test_subset_shares_match_the_design(
    attr: str, values: tuple[str, ...], shares: tuple[float, ...]
) -> None:
    tickets = load_task(0, 3000).tickets
    n = len(tickets)
    counts = Counter(getattr(t, attr) for t in tickets)
    for value, share in zip(values, shares, strict=True):
        sd = math.sqrt(n * share * (1 - share))
        assert abs(counts[value] - n * share) < 4 * sd, (value, counts[value], n * share)


def test_channels_and_lengths_look_like_what_they_are() -> None:
    tickets = load_task(0, 3000).tickets
    for t in tickets:
        if t.channel == "email":
            assert t.text.startswith("Subject: ")
        elif t.channel == "phone":
            assert t.text.startswith("[call transcript]")
        else:
            assert t.text.count("\n") >= 2
    mean_len = {
        length: sum(len(t.text) for t in tickets if t.length == length)
        / sum(t.length == length for t in tickets)
        for length in LENGTHS
    }
    assert mean_len["short"] < mean_len["medium"] < mean_len["long"]


def test_languages_are_written_in_their_language() -> None:
    """Each ticket uses the phrases of its own language (its issue sentence, before slots)."""
    book = phrasebook()
    tickets = load_task(0, 600).tickets
    for t in tickets:
        issues = book["languages"][t.language]["queues"][t.queue]["issues"]
        heads = [s.split("{")[0][:18] for s in issues]
        assert any(h.lower() in t.text.lower() for h in heads if h), (t.language, t.text)


def test_phrasebook_is_complete_and_uses_known_slots() -> None:
    book = phrasebook()
    assert set(book["languages"]) == set(LANGUAGES)
    assert set(book["keywords"]) == set(QUEUES)
    for code, lang in book["languages"].items():
        assert set(lang["queues"]) == set(QUEUES), code
        for queue, parts in lang["queues"].items():
            assert len(parts["issues"]) >= 4 and len(parts["details"]) >= 3, (code, queue)
            assert parts["subjects"], (code, queue)

        def walk(node: object) -> list[str]:
            if isinstance(node, str):
                return [node]
            if isinstance(node, dict):
                return [s for v in node.values() for s in walk(v)]
            if isinstance(node, list):
                return [s for v in node for s in walk(v)]
            return []

        skip = {lang["currency"], lang["date_format"]}
        for text in walk(lang):
            if text in skip:
                continue
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f}
            assert fields <= SLOTS, (code, text)


def test_confusions_name_every_other_queue() -> None:
    for queue, wrong in CONFUSIONS.items():
        assert set(wrong) == set(QUEUES) - {queue}
        assert all(w > 0 for w in wrong.values())


def test_system_prompt_lists_every_queue() -> None:
    for queue in QUEUES:
        assert f"- {queue}:" in SYSTEM_PROMPT


def test_truth_found_by_body_messages_or_text() -> None:
    task = load_task(0, 3000)
    for t in task.tickets[:200]:
        body = {"model": "m", "messages": t.messages()}
        assert truth_for(body, task) == t.queue
        assert truth_for(t.messages(), task) == t.queue
        assert truth_for(t.user_message(), task) == t.queue
        assert truth_for(t.text, task) == t.queue
        assert truth_for("  " + t.text + "\n", task) == t.queue
        assert task.find(body) is t
    # The default task is the one load_task() gives with no arguments.
    assert truth_for(task.tickets[7].messages()) == task.tickets[7].queue


def test_truth_of_an_unknown_request_is_none() -> None:
    task = load_task(0, 300)
    assert truth_for("My printer is on fire.", task) is None
    assert truth_for({"messages": [{"role": "system", "content": SYSTEM_PROMPT}]}, task) is None
    assert truth_for({"messages": "not a list"}, task) is None
    assert truth_for([], task) is None


def test_user_text_reads_content_parts() -> None:
    t = load_task(0, 50).tickets[3]
    parts = [
        {"type": "text", "text": t.user_message()[:10]},
        {"type": "text", "text": t.user_message()[10:]},
    ]
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": parts}]
    assert user_text(messages) == t.user_message()
    assert truth_for(messages, load_task(0, 50)) == t.queue


@pytest.mark.parametrize(
    ("output", "queue"),
    [
        ("billing", "billing"),
        (" Billing.", "billing"),
        ("Queue: refunds", "refunds"),
        ("**SECURITY**", "security"),
        ("This looks like a refund request.", "refunds"),
        ("technical\n", "technical"),
        ("account or security? I'd say account", "account"),
        ("shipping-related", "shipping"),
        ("I don't know", None),
        ("", None),
        (None, None),
        ("accounting", None),
    ],
)
def test_extract_queue(output: str | None, queue: str | None) -> None:
    assert extract_queue(output) == queue


def test_simulated_labeller_errs_at_its_rate_and_repeats_itself() -> None:
    task = load_task(0, 3000)
    labels = [simulated_label(t.messages(), 0.05, seed=3, task=task) for t in task.tickets]
    wrong = sum(label != t.queue for label, t in zip(labels, task.tickets, strict=True))
    n = len(task)
    assert abs(wrong - 0.05 * n) < 4 * math.sqrt(n * 0.05 * 0.95)
    assert all(label in QUEUES for label in labels)
    assert labels == [simulated_label(t.text, 0.05, seed=3, task=task) for t in task.tickets]
    other_seed = [simulated_label(t.text, 0.05, seed=4, task=task) for t in task.tickets]
    assert other_seed != labels
    assert all(simulated_label(t.text, 0.0, task=task) == t.queue for t in task.tickets[:100])
    assert simulated_label("not a ticket", 0.05, task=task) is None
