"""The bundled task: routing customer-support tickets to a queue, with its ground truth.

A few thousand distinct tickets are generated deterministically for a seed from the
phrasebook (`phrases.yaml`): four languages, three channels (email, chat, phone transcript)
and three lengths, which are also the subsets an analysis breaks results down by (tags
`lang:de`, `channel:phone`, `length:long`). An application sends `SYSTEM_PROMPT` and the
ticket's `user_message()`; the answer is one queue name, read back by `extract_queue`. The
simulator and the demo's simulated labeller find the truth by the ticket text (`truth_for`).
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import yaml

QUEUES: tuple[str, ...] = ("billing", "technical", "account", "shipping", "refunds", "security")
QUEUE_SHARE = (0.20, 0.24, 0.14, 0.18, 0.14, 0.10)
LANGUAGES: tuple[str, ...] = ("en", "de", "es", "fr")
LANGUAGE_SHARE = (0.45, 0.20, 0.20, 0.15)
CHANNELS: tuple[str, ...] = ("email", "chat", "phone")
CHANNEL_SHARE = (0.45, 0.35, 0.20)
LENGTHS: tuple[str, ...] = ("short", "medium", "long")
LENGTH_SHARE = (0.30, 0.45, 0.25)

# Which wrong queue a router tends to pick for each true queue (relative weights).
CONFUSIONS: dict[str, dict[str, float]] = {
    "billing": {"refunds": 3.0, "account": 1.5, "security": 1.0, "shipping": 0.5, "technical": 0.5},
    "technical": {"account": 3.0, "security": 1.0, "billing": 0.5, "shipping": 0.5, "refunds": 0.5},
    "account": {"security": 3.0, "technical": 2.0, "billing": 1.0, "shipping": 0.3, "refunds": 0.3},
    "shipping": {"refunds": 3.0, "billing": 1.0, "technical": 0.5, "account": 0.5, "security": 0.3},
    "refunds": {"billing": 3.0, "shipping": 2.5, "account": 0.5, "technical": 0.3, "security": 0.3},
    "security": {"account": 3.5, "billing": 1.0, "technical": 1.0, "refunds": 0.3, "shipping": 0.2},
}

SYSTEM_PROMPT = (
    "You are the ticket router of Northwind customer support. Read the customer's ticket "
    "(an email, a chat or a phone transcript, in any language) and answer with the one queue "
    "that should handle it:\n"
    "- billing: invoices, charges, payment methods, subscription prices\n"
    "- technical: devices or the app not working, errors, updates\n"
    "- account: login, password resets, profile and account settings\n"
    "- shipping: order status, tracking, delivery and addresses\n"
    "- refunds: returns, cancellations and money back\n"
    "- security: suspicious logins, hacked accounts, phishing\n"
    "Reply with the queue name only, in lowercase."
)
_USER_PREFIX = "Route this ticket:\n\n"
_CHAT_ROLES = {
    "en": ("Customer", "Agent", "Caller"),
    "de": ("Kunde", "Mitarbeiter", "Anrufer"),
    "es": ("Cliente", "Agente", "Cliente"),
    "fr": ("Client", "Conseiller", "Client"),
}


@dataclass(frozen=True)
class Ticket:
    """One support ticket, its subsets and the queue that should handle it."""

    ticket_id: str
    text: str
    queue: str
    language: str
    channel: str
    length: str

    @property
    def tags(self) -> tuple[str, str, str]:
        """The subsets this ticket belongs to, as request tags."""
        return (f"lang:{self.language}", f"channel:{self.channel}", f"length:{self.length}")

    def user_message(self) -> str:
        """The user message an application sends: a short instruction, then the ticket."""
        return _USER_PREFIX + self.text

    def messages(self) -> list[dict[str, str]]:
        """The chat messages an application sends to route this ticket."""
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": self.user_message()},
        ]


@dataclass(frozen=True)
class Task:
    """The generated tickets of one seed, found again by their text."""

    seed: int
    tickets: tuple[Ticket, ...]
    _by_text: dict[str, Ticket] = field(repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.tickets)

    def lookup(self, text: str) -> Ticket | None:
        """The ticket whose text or user message this is (surrounding blanks ignored)."""
        return self._by_text.get(text.strip())

    def find(self, request: Any) -> Ticket | None:
        """The ticket a request routes: a chat body, its messages, or the user text."""
        text = request if isinstance(request, str) else user_text(request)
        return None if text is None else self.lookup(text)


def message_text(content: Any) -> str:
    """A message's text, whether `content` is a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def user_text(request: Mapping[str, Any] | Sequence[Any]) -> str | None:
    """The last user message of a chat request body (or of its `messages` list)."""
    messages = request.get("messages") if isinstance(request, Mapping) else request
    if not isinstance(messages, Sequence):
        return None
    for msg in reversed(messages):
        if isinstance(msg, Mapping) and msg.get("role") == "user":
            return message_text(msg.get("content"))
    return None


def truth_for(request: Any, task: Task | None = None) -> str | None:
    """The ground-truth queue of a request (body, messages or ticket text); None if unknown."""
    ticket = (task or load_task()).find(request)
    return None if ticket is None else ticket.queue


def simulated_label(
    request: Any, error_rate: float = 0.02, seed: int = 0, task: Task | None = None
) -> str | None:
    """A simulated labeller's queue for a request: the truth, except for a share of
    `error_rate` mistakes (plausible confusions); the same request always gets the same label."""
    ticket = (task or load_task()).find(request)
    if ticket is None:
        return None
    rng = random.Random(f"label\x1f{seed}\x1f{ticket.text}")
    if rng.random() >= error_rate:
        return ticket.queue
    wrong = CONFUSIONS[ticket.queue]
    return rng.choices(list(wrong), list(wrong.values()))[0]


_ALIASES = {"refund": "refunds", "tech": "technical", "technical support": "technical"}
_QUEUE_RE = re.compile(r"\b(" + "|".join([*QUEUES, *_ALIASES]) + r")\b", re.IGNORECASE)


def extract_queue(output: str | None) -> str | None:
    """The queue a model's output names ('Billing.', 'queue: refunds'); None if none."""
    if not output:
        return None
    m = _QUEUE_RE.search(output)
    if m is None:
        return None
    word = m.group(1).casefold()
    return _ALIASES.get(word, word)


@cache
def phrasebook() -> dict[str, Any]:
    """The ticket phrasebook shipped with the package."""
    text = resources.files("shadoweval.simulator").joinpath("phrases.yaml").read_text("utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data: dict[str, Any] = yaml.load(text, Loader=loader)  # a safe loader, in C when built
    return data


def _ascii(name: str) -> str:
    """A name as it would appear in an e-mail address: 'Lucía' -> 'lucia'."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


def _slots(rng: random.Random, book: dict[str, Any], lang: dict[str, Any]) -> dict[str, str]:
    """Values for the phrasebook's {slots}: order numbers, amounts, dates, names, products."""
    name = rng.choice(lang["names"])
    cents = rng.choice(("00", "49", "90", "95", "99"))
    amount = f"{rng.randint(5, 399)}.{cents}"
    if lang["currency"].endswith("€"):
        amount = amount.replace(".", ",")
    day = date(2025, 1, 1) + timedelta(days=rng.randrange(365))
    return {
        "name": name,
        "agent": rng.choice(lang["agents"]),
        "carrier": rng.choice(lang["carriers"]),
        "amount": lang["currency"].replace("{amount}", amount),
        "date": day.strftime(lang["date_format"]).replace(" 0", " "),
        "order": f"NW-{rng.randint(100000, 999999)}",
        "code": f"{rng.choice('ABEKRX')}{rng.randint(1000, 99999)}",
        "product": rng.choice(book["products"]),
        "plan": rng.choice(book["plans"]),
        "device": rng.choice(book["devices"]),
        "days": str(rng.randint(2, 12)),
        "last4": f"{rng.randrange(10000):04d}",
        "company": book["company"],
        "email": f"{_ascii(name)}.{rng.randint(1, 98)}@{rng.choice(('example.com', 'example.org', 'example.net'))}",
    }


def _sentences(rng: random.Random, lang: dict[str, Any], queue: str, length: str) -> list[str]:
    """The body: the issue, details for longer tickets, and context and an aside for long ones."""
    phrases = lang["queues"][queue]
    body = [rng.choice(phrases["issues"])]
    n_details = {"short": 0, "medium": rng.randint(1, 2), "long": rng.randint(2, 3)}[length]
    body += rng.sample(phrases["details"], n_details)
    if length == "long":
        first, last = rng.sample(lang["context"], 2)
        body.insert(0, first)
        if rng.random() < 0.7:
            body.insert(rng.randint(1, len(body)), rng.choice(lang["asides"]))
        body.append(last)
    elif length == "medium" and rng.random() < 0.4:
        body.append(rng.choice(lang["context"]))
    if length != "short" and rng.random() < 0.5:
        body.append(rng.choice(lang["closers"]))
    return body


def _email(rng: random.Random, lang: dict[str, Any], queue: str, body: list[str]) -> str:
    """An e-mail: subject, greeting, the body as one paragraph, sign-off and name."""
    e = lang["email"]
    subject = rng.choice(lang["queues"][queue]["subjects"])
    greeting = rng.choice(e["greetings"])
    return f"Subject: {subject}\n\n{greeting}\n\n{' '.join(body)}\n\n{rng.choice(e['signoffs'])}\n{{name}}"


def _chat(rng: random.Random, lang: dict[str, Any], code: str, body: list[str]) -> str:
    """A chat log: the customer's sentences spread over turns answered by an agent."""
    customer, agent, _ = _CHAT_ROLES[code]
    c = lang["chat"]
    lines = [
        f"{customer}: {rng.choice(c['customer_open'])}",
        f"{agent}: {rng.choice(c['agent_open'])}",
    ]
    lines.append(f"{customer}: {body[0]}")
    rest = body[1:]
    while rest:
        take = rng.randint(1, 2)
        lines.append(f"{agent}: {rng.choice(c['agent_follow'])}")
        lines.append(f"{customer}: {' '.join(rest[:take])}")
        rest = rest[take:]
    return "\n".join(lines)


def _phone(rng: random.Random, lang: dict[str, Any], code: str, body: list[str]) -> str:
    """A call transcript: spoken sentences, some opening with a filler word."""
    _, agent, caller = _CHAT_ROLES[code]
    p = lang["phone"]

    def spoken(s: str) -> str:
        if rng.random() < 0.45:
            return f"{rng.choice(p['fillers'])} {s[0].lower()}{s[1:]}"
        return s

    lines = [f"[call transcript]\n{agent}: {rng.choice(p['agent_open'])}"]
    lines.append(f"{caller}: {spoken(body[0])}")
    for i in range(1, len(body), 2):
        lines.append(f"{agent}: {rng.choice(p['agent_follow'])}")
        lines.append(f"{caller}: {' '.join(spoken(s) for s in body[i : i + 2])}")
    return "\n".join(lines)


def _ticket_text(rng: random.Random, language: str, channel: str, length: str, queue: str) -> str:
    """One ticket's text in its language and channel, slots filled."""
    book = phrasebook()
    lang = book["languages"][language]
    body = _sentences(rng, lang, queue, length)
    if channel == "email":
        template = _email(rng, lang, queue, body)
    elif channel == "chat":
        template = _chat(rng, lang, language, body)
    else:
        template = _phone(rng, lang, language, body)
    slots = _slots(rng, book, lang)
    return template.format_map(slots)


@lru_cache(maxsize=8)
def load_task(seed: int = 0, size: int = 3000) -> Task:
    """The `size` distinct tickets of a seed (the same seed always gives the same tickets)."""
    if size < 1:
        raise ValueError("task size must be at least 1")
    rng = random.Random(seed)
    tickets: list[Ticket] = []
    by_text: dict[str, Ticket] = {}
    attempts = 0
    while len(tickets) < size:
        attempts += 1
        if attempts > size * 20:
            raise ValueError(f"cannot generate {size} distinct tickets")
        queue = rng.choices(QUEUES, QUEUE_SHARE)[0]
        language = rng.choices(LANGUAGES, LANGUAGE_SHARE)[0]
        channel = rng.choices(CHANNELS, CHANNEL_SHARE)[0]
        length = rng.choices(LENGTHS, LENGTH_SHARE)[0]
        text = _ticket_text(rng, language, channel, length, queue).strip()
        if text in by_text:
            continue
        ticket = Ticket(f"T{len(tickets):05d}", text, queue, language, channel, length)
        tickets.append(ticket)
        by_text[text] = ticket
        by_text[ticket.user_message().strip()] = ticket
    return Task(seed, tuple(tickets), by_text)
