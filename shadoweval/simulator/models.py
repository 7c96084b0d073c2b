"""How a simulated model answers: right or wrong, how sure it says it is, how fast, whether it fails.

The answer is a function of (model behaviour, request messages, seed), so the same request
always gets the same answer, streamed or not. The model knows the truth by looking the
ticket up in the generated task; it is right with the probability its scenario gives for
the ticket's subsets, and errs on the same tickets as other models to the degree
`shared_difficulty` says. Its reported confidence (the first answer token's logprob, with
the other queues as `top_logprobs`) follows its calibration profile. Latency, errors and
timeouts are per-call draws from a seeded stream, so retries behave as with a real server.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from shadoweval.simulator.scenario import CHANCE, ModelSpec, Scenario
from shadoweval.simulator.task import CONFUSIONS, QUEUES, Task, Ticket, message_text, phrasebook

MAX_CONFIDENCE = 1.0 - 1e-6
_ROUTING_HINT = re.compile(r"\b(" + "|".join(QUEUES) + r")\b", re.IGNORECASE)
_CHAT_WORDS = (
    "Thanks for reaching out. I can help with that: could you share a few more details?",
    "Here is a short answer: it depends on your settings, but the default works for most people.",
    "Sure. The quickest way is to start from the overview page and follow the steps there.",
    "I'm not certain, but the most likely explanation is a temporary problem on the server side.",
)
_OPENERS = ("Thanks", "Sure", "Here", "I", "The", "Yes")


def logit(p: float) -> float:
    """log(p / (1 - p))."""
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    """The inverse of logit, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _phi(x: float) -> float:
    """The standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _rng(*parts: object) -> random.Random:
    """A random stream determined by its parts (stable across runs and machines)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).digest()
    return random.Random(int.from_bytes(digest, "big"))


def messages_key(messages: list[Any]) -> str:
    """A digest of the request content an answer depends on: the messages' roles and texts."""
    text = "\x1e".join(
        f"{m.get('role')}\x1d{message_text(m.get('content'))}"
        for m in messages
        if isinstance(m, dict)
    )
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Answer:
    """What a model says to one request, and how sure it claims to be."""

    tokens: tuple[str, ...]  # the completion, token by token
    top: tuple[tuple[str, float], ...]  # first token's alternatives (token, prob), its own first
    queue: str | None  # the queue the answer names, None for a free-text reply
    correct: bool | None  # against the task's truth; None when the ticket is unknown
    belief: float  # the model's real chance of being right, before the profile distorts it

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def confidence(self) -> float:
        """The probability reported for the first token (what logprob confidence reads)."""
        return self.top[0][1]


@dataclass(frozen=True)
class CallPlan:
    """One call's fate and pacing: ok, an HTTP error, or a hang; seconds already time-scaled."""

    fate: Literal["ok", "error", "timeout"]
    status: int
    ttft_s: float
    token_s: float


class SimModel:
    """One model of a scenario: answers (deterministic) and call plans (seeded per server)."""

    def __init__(self, spec: ModelSpec, scenario: Scenario, task: Task) -> None:
        self.spec = spec
        self.task = task
        self._seed = scenario.seed
        self._rho = scenario.shared_difficulty
        self._scale = scenario.time_scale
        self._calls = _rng("calls", scenario.seed, spec.name, spec.seed)
        self._statuses = list(spec.error_statuses)
        self._status_weights = list(spec.error_statuses.values())
        self._base_logit = logit(spec.accuracy)
        self._tag_shift = {t: logit(a) - self._base_logit for t, a in spec.subset_accuracy.items()}
        self.p_correct = lru_cache(maxsize=256)(self._p_correct)
        self._location = lru_cache(maxsize=256)(self._belief_location)

    @property
    def name(self) -> str:
        """The name requests select this model by."""
        return self.spec.name

    def _p_correct(self, tags: tuple[str, ...]) -> float:
        """Chance of a right answer for a ticket with these tags (logit shifts add up)."""
        return sigmoid(self._base_logit + sum(self._tag_shift.get(t, 0.0) for t in tags))

    def ticket_p_correct(self, ticket: Ticket) -> float:
        """Chance of a right answer on this ticket, from its subsets."""
        return self.p_correct(ticket.tags)

    def _belief_location(self, p: float) -> float:
        """The location of logit(belief above chance) whose beliefs average exactly p."""
        target = (p - CHANCE) / (1.0 - CHANCE)
        spread_ = self.spec.calibration.resolution
        lo, hi = -40.0, 40.0
        for _ in range(80):
            mid = (lo + hi) / 2.0
            mean = sum(w * sigmoid(mid + spread_ * x) for x, w in _NORMAL_NODES)
            lo, hi = (mid, hi) if mean < target else (lo, mid)
        return (lo + hi) / 2.0

    def report(self, belief: float) -> float:
        """The confidence the calibration profile reports for a belief."""
        cal = self.spec.calibration
        c = sigmoid(cal.temperature * logit(belief) + cal.bias)
        return min(max(c, CHANCE), MAX_CONFIDENCE)

    def belief_of(self, reported: float) -> float:
        """The belief behind a reported confidence (the profile's inverse, where it has one)."""
        cal = self.spec.calibration
        return sigmoid((logit(reported) - cal.bias) / cal.temperature)

    def answer(self, messages: list[Any]) -> Answer:
        """The deterministic answer to a chat request."""
        key = messages_key(messages)
        user = next(
            (
                message_text(m.get("content"))
                for m in reversed(messages)
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            "",
        )
        ticket = self.task.lookup(user)
        if ticket is not None:
            return self._route(key, ticket.queue, self.ticket_p_correct(ticket), known=True)
        routing = " ".join(message_text(m.get("content")) for m in messages if isinstance(m, dict))
        if len({q.casefold() for q in _ROUTING_HINT.findall(routing)}) >= 3:
            return self._route(key, guess_queue(user), self.spec.accuracy, known=False)
        return self._chat(key)

    def _draws(self, key: str) -> random.Random:
        """This request's random stream: the behaviour's own, or (nondeterminism) a fresh one."""
        spec = self.spec
        if (
            spec.nondeterminism > 0
            and _rng("nd", spec.seed, spec.name, key).random() < spec.nondeterminism
        ):
            return _rng("fresh", self._seed, spec.behaviour, spec.seed, key)
        return _rng("stable", self._seed, spec.behaviour, key)

    def _route(self, key: str, truth: str, p: float, known: bool) -> Answer:
        """A queue answer, right with chance p on average, and its reported confidence."""
        rng = self._draws(key)
        shared = _rng("ticket", self._seed, key)
        rho, rest = self._rho, math.sqrt(1.0 - self._rho**2)
        # The belief and the coin it is tossed with each mix a per-ticket part that every
        # model shares (hard tickets are hard for all) with the model's own; the two stay
        # independent of each other, so P(right | belief) = belief holds exactly.
        ease = rho * shared.gauss(0.0, 1.0) + rest * rng.gauss(0.0, 1.0)
        res = self.spec.calibration.resolution
        belief = CHANCE + (1.0 - CHANCE) * sigmoid(self._location(p) + res * ease)
        u = _phi(rho * shared.gauss(0.0, 1.0) + rest * rng.gauss(0.0, 1.0))
        correct = u < belief
        confusions = CONFUSIONS[truth]
        chosen = truth if correct else rng.choices(list(confusions), list(confusions.values()))[0]
        others = sorted(
            (q for q in QUEUES if q != chosen),
            key=lambda q: (
                -(1e9 if q == truth else CONFUSIONS[chosen].get(q, 0.0))
                * (0.7 + 0.6 * rng.random())
            ),
        )
        c = self.report(belief)
        masses = spread(1.0 - c, len(others), cap=c)
        top = ((chosen, c), *zip(others, masses, strict=True))
        return Answer((chosen,), top, chosen, correct if known else None, belief)

    def _chat(self, key: str) -> Answer:
        """A short free-text reply for a prompt that is not a routing request."""
        rng = self._draws(key)
        words = rng.choice(_CHAT_WORDS).split(" ")
        tokens = (words[0], *(" " + w for w in words[1:]))
        belief = CHANCE + (1.0 - CHANCE) * sigmoid(1.0 + rng.gauss(0.0, 1.0))
        c = self.report(belief)
        others = [o for o in _OPENERS if o != tokens[0]]
        top = ((tokens[0], c), *zip(others, spread(1.0 - c, len(others), cap=c), strict=True))
        return Answer(tokens, top, None, None, belief)

    def plan_call(self) -> CallPlan:
        """Draw one call's fate and latency (a fresh draw per call, seeded per server)."""
        spec, rng = self.spec, self._calls
        u = rng.random()
        ttft_ms = spec.latency.ttft_ms.median * math.exp(
            spec.latency.ttft_ms.sigma * rng.gauss(0.0, 1.0)
        )
        tps = spec.latency.tokens_per_s.median * math.exp(
            spec.latency.tokens_per_s.sigma * rng.gauss(0.0, 1.0)
        )
        ttft_s, token_s = ttft_ms / 1000.0 * self._scale, self._scale / tps
        if u < spec.timeout_rate:
            return CallPlan("timeout", 0, ttft_s, token_s)
        if u < spec.timeout_rate + spec.error_rate:
            status = rng.choices(self._statuses, self._status_weights)[0]
            return CallPlan("error", status, ttft_s, token_s)
        return CallPlan("ok", 200, ttft_s, token_s)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call with this usage costs at the model's prices."""
        price = self.spec.price
        return (
            prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok
        ) / 1e6


def _normal_nodes(n: int = 40) -> tuple[tuple[float, float], ...]:
    """Gauss-Hermite nodes and weights for expectations over a standard normal."""
    x, w = np.polynomial.hermite.hermgauss(n)
    return tuple(
        (float(xi * math.sqrt(2.0)), float(wi / math.sqrt(math.pi)))
        for xi, wi in zip(x, w, strict=True)
    )


_NORMAL_NODES = _normal_nodes()


def spread(mass: float, n: int, cap: float) -> list[float]:
    """Split `mass` over n alternatives in decreasing shares, none above `cap` (needs n*cap >= mass)."""
    weights = [0.5**i for i in range(n)]
    out = [0.0] * n
    free = list(range(n))
    remaining = mass
    while free and remaining > 1e-15:
        total = sum(weights[i] for i in free)
        over = [i for i in free if remaining * weights[i] / total > cap]
        if not over:
            for i in free:
                out[i] = remaining * weights[i] / total
            break
        for i in over:
            out[i] = cap
            remaining -= cap
            free.remove(i)
    return out


# On a tie the more specific queue wins: "my account was hacked" is a security ticket.
_TIE_ORDER = ("security", "refunds", "shipping", "billing", "account", "technical")


@lru_cache(maxsize=1)
def _keywords() -> tuple[tuple[str, tuple[str, ...]], ...]:
    words = phrasebook()["keywords"]
    return tuple((q, tuple(words[q])) for q in _TIE_ORDER)


def guess_queue(text: str) -> str:
    """A plausible queue for a ticket the task does not know: the one its words point to most."""
    folded = text.casefold()
    best, best_hits = "technical", 0
    for queue, words in _keywords():
        hits = sum(folded.count(w) for w in words)
        if hits > best_hits:
            best, best_hits = queue, hits
    return best


def count_tokens(messages: list[Any]) -> int:
    """A cheap prompt token estimate: about four characters per token plus framing."""
    return 3 + sum(
        4 + len(message_text(m.get("content"))) // 4 for m in messages if isinstance(m, dict)
    )
