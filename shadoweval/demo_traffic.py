"""The demo's client: the support team's ticket router, calling production through the proxy.

It behaves as a real application does: the official `openai` SDK (`AsyncOpenAI`) pointed at
the proxy, many requests in flight at once, some streamed, some in a customer's session (sent
one after another with an `x-session-id` header), each tagged with the ticket's language,
channel and length (`x-shadow-tags`) so the report can break results down by them. It notes
which ticket each request id (`x-shadow-request-id`) carried: that is how the simulated
labeller knows the truth later, and how the demo knows production's real accuracy on all
traffic - a figure a real team never has, printed beside the report's estimate.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import openai
from openai.types.chat import ChatCompletionMessageParam
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from proxy.tasks import run_all
from shadoweval.simulator.task import Task, Ticket, extract_queue

REQUEST_ID_HEADER = "x-shadow-request-id"
SESSION_SIZES = (2, 3, 4, 5)


@dataclass(frozen=True)
class Call:
    """One request the application makes: which ticket, streamed or not, in which session."""

    ticket: Ticket
    stream: bool
    session_id: str | None
    user_id: str  # the customer: the proxy's sticky sampling key


def plan_calls(
    task: Task, n: int, *, seed: int, stream_share: float = 0.3, session_share: float = 0.3
) -> list[list[Call]]:
    """`n` calls in units: one ticket, or a customer's session of 2-5 tickets in one language.

    Tickets are drawn without replacement until the task runs out, then again; about
    `session_share` of the calls fall in sessions and `stream_share` are streamed.
    """
    rng = random.Random(seed)
    pool = list(task.tickets)
    rng.shuffle(pool)
    by_lang: dict[str, list[Ticket]] = defaultdict(list)
    for t in pool:
        by_lang[t.language].append(t)
    cursor: Counter[str] = Counter()
    mean_size = sum(SESSION_SIZES) / len(SESSION_SIZES)
    # P(a unit is a session) such that about `session_share` of calls are in one.
    p_session = session_share / (mean_size - session_share * (mean_size - 1))
    units: list[list[Call]] = []
    planned = 0
    i = 0
    while planned < n:
        first = pool[i % len(pool)]
        i += 1
        if rng.random() < p_session:
            size = min(rng.choice(SESSION_SIZES), n - planned)
            lang = first.language
            same = by_lang[lang]
            tickets = [first]
            while len(tickets) < size and len(same) > 1:
                other = same[cursor[lang] % len(same)]
                cursor[lang] += 1
                if other is not first:
                    tickets.append(other)
            sid: str | None = f"sess-{rng.getrandbits(40):010x}"
        else:
            tickets, sid = [first], None
        user = f"cust-{rng.getrandbits(40):010x}"
        units.append([Call(t, rng.random() < stream_share, sid, user) for t in tickets])
        planned += len(tickets)
    return units


@dataclass
class TrafficSummary:
    """What the application saw: counts, its own latencies, and each request id's ticket."""

    planned: int = 0
    sent: int = 0
    answered: int = 0
    correct: int = 0  # production's answers that name the ticket's true queue
    streamed: int = 0
    in_sessions: int = 0
    sessions: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    tickets: dict[str, Ticket] = field(default_factory=dict)  # request id -> ticket

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def rate_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        """A quantile of the latency the application saw (through the proxy)."""
        return float(np.quantile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, openai.APITimeoutError):
        return "client timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    return type(exc).__name__


class TrafficRun:
    """Sends planned calls with bounded concurrency and keeps the summary up to date."""

    def __init__(self, client: openai.AsyncOpenAI, model: str, summary: TrafficSummary) -> None:
        self.client = client
        self.model = model
        self.summary = summary

    async def call(self, call: Call) -> None:
        """One request as the application makes it; failures are counted, never raised."""
        s = self.summary
        headers = {"x-shadow-tags": ",".join(call.ticket.tags), "x-user-id": call.user_id}
        if call.session_id is not None:
            headers["x-session-id"] = call.session_id
        messages = cast(list[ChatCompletionMessageParam], call.ticket.messages())
        started = time.perf_counter()
        request_id: str | None = None
        try:
            if call.stream:
                raw: Any = await self.client.chat.completions.with_raw_response.create(
                    model=self.model,
                    messages=messages,
                    logprobs=True,
                    top_logprobs=5,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=headers,
                )
                request_id = raw.headers.get(REQUEST_ID_HEADER)
                parts = []
                async for chunk in raw.parse():
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                answer = "".join(parts)
            else:
                raw = await self.client.chat.completions.with_raw_response.create(
                    model=self.model,
                    messages=messages,
                    logprobs=True,
                    top_logprobs=5,
                    extra_headers=headers,
                )
                request_id = raw.headers.get(REQUEST_ID_HEADER)
                answer = raw.parse().choices[0].message.content or ""
        except openai.APIError as exc:
            response = getattr(exc, "response", None)
            if response is not None:
                request_id = response.headers.get(REQUEST_ID_HEADER)
            s.errors[_error_kind(exc)] += 1
        else:
            s.latencies_ms.append(1000.0 * (time.perf_counter() - started))
            s.answered += 1
            s.correct += int(extract_queue(answer) == call.ticket.queue)
        s.sent += 1
        s.streamed += int(call.stream)
        s.in_sessions += int(call.session_id is not None)
        if request_id:
            s.tickets[request_id] = call.ticket


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>5.0f} req/s"),
        TextColumn("{task.fields[streamed]} streamed"),
        TextColumn("{task.fields[sessions]} sessions"),
        TextColumn("[red]{task.fields[errors]} errors"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


async def send_traffic(
    base_url: str,
    units: list[list[Call]],
    *,
    model: str,
    concurrency: int,
    timeout_s: float,
    console: Console,
    progress: bool = True,
) -> TrafficSummary:
    """Send every planned call through the proxy at `base_url` (ending in /v1)."""
    summary = TrafficSummary(planned=sum(len(u) for u in units))
    queue: asyncio.Queue[list[Call]] = asyncio.Queue()
    for unit in units:
        queue.put_nowait(unit)
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="demo-app-key", max_retries=0, timeout=timeout_s
    )
    run = TrafficRun(client, model, summary)
    bar = _progress(console, progress)
    task_id = bar.add_task("client → proxy", total=summary.planned, rate=0.0)
    started = time.perf_counter()

    def refresh() -> None:
        summary.elapsed_s = time.perf_counter() - started
        bar.update(
            task_id,
            completed=summary.sent,
            rate=summary.rate_per_s,
            streamed=summary.streamed,
            sessions=summary.sessions,
            errors=summary.failed,
        )

    async def worker() -> None:
        while True:
            try:
                unit = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if unit[0].session_id is not None:
                summary.sessions += 1
            for call in unit:  # a session's tickets follow one another
                await run.call(call)
                refresh()

    refresh()
    try:
        with bar:
            await run_all("demo-client", [worker() for _ in range(max(1, concurrency))])
            refresh()
    finally:
        await client.close()
    return summary
