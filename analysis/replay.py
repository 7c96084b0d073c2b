"""Replay: send every request of a frozen eval set to one candidate and record its answers.

For a candidate that never saw live traffic, or again with `repeats` K to measure (and
average out) its run-to-run variance. Each call goes through `proxy.modelclient` exactly as
a live shadow call would (the candidate's model, key, headers and extra body) with the
recorded request body (as stored: redacted where redaction applied) and its stream flag,
and is written as a `responses` row with `source = 'replay'` and `attempt` 1..K.

- Bounded: at most `concurrency` calls in flight and, with `rate`, at most that many
  calls started per second. Live budgets do not apply: replay is an explicit, bounded run.
- Resumable: (request, attempt) pairs that already have a replay row for this candidate
  are skipped, so running the same command again finishes what was left - and with
  `retry_failed`, pairs whose rows are all failures are sent again.
- Interruptible: cancelling the run (Ctrl-C) stops new calls, abandons those in flight
  (they are sent again on resume) and writes every completed row before returning.
  Completed rows are also written every `flush_every` rows, so a crash loses little.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from proxy.config import CandidateSettings, Settings
from proxy.errors import InputError
from proxy.lake.reader import connect
from proxy.lake.writer import SegmentWriter, default_writer_id
from proxy.modelclient import ModelClient
from proxy.tasks import run_all

SOURCE = "replay"
FLUSH_EVERY = 50


@dataclass(frozen=True)
class Job:
    """One call to make: a request of the eval set and which repeat it is (1-based)."""

    request_id: str
    route: str
    body: dict[str, Any]
    stream: bool
    attempt: int


@dataclass
class ReplaySummary:
    """What a run did; filled in as it goes, so it is complete even after an interruption."""

    items: int = 0  # eval-set requests that can be replayed
    planned: int = 0  # calls this run set out to make
    skipped: int = 0  # (request, attempt) pairs already recorded
    no_content: int = 0  # requests recorded without content: nothing to send
    done: int = 0  # calls completed and recorded
    errors: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


_ITEMS_SQL = """
SELECT e.request_id, any_value(r.route), any_value(r.body), any_value(r.stream)
FROM (SELECT DISTINCT request_id FROM eval_sets WHERE eval_set = $name) e
LEFT JOIN requests r USING (request_id)
GROUP BY e.request_id ORDER BY e.request_id
"""
_DONE_SQL = """
SELECT request_id, attempt, bool_or(error IS NULL) FROM responses
WHERE target = $target AND source = 'replay'
  AND request_id IN (SELECT request_id FROM eval_sets WHERE eval_set = $name)
GROUP BY request_id, attempt
"""


def plan(
    data_dir: Path,
    eval_set: str,
    candidate: str,
    *,
    repeats: int = 1,
    retry_failed: bool = False,
    summary: ReplaySummary | None = None,
) -> tuple[list[Job], ReplaySummary]:
    """The calls still to make, attempt by attempt, and what was skipped."""
    if repeats < 1:
        raise InputError("--repeats must be at least 1")
    summary = summary if summary is not None else ReplaySummary()
    con = connect(data_dir)
    try:
        found = con.execute(
            "SELECT count(*) FROM eval_sets WHERE eval_set = $name", {"name": eval_set}
        ).fetchone()
        if not found or not found[0]:
            raise InputError(f"unknown eval set {eval_set!r} in {data_dir}")
        rows = con.execute(_ITEMS_SQL, {"name": eval_set}).fetchall()
        done = {
            (rid, attempt)
            for rid, attempt, ok in con.execute(
                _DONE_SQL, {"target": candidate, "name": eval_set}
            ).fetchall()
            if ok or not retry_failed
        }
    finally:
        con.close()
    items: list[tuple[str, str, dict[str, Any], bool]] = []
    for rid, route, body, stream in rows:
        parsed = _body(body)
        if parsed is None or route is None:
            summary.no_content += 1
            continue
        items.append((rid, route, parsed, bool(stream or parsed.get("stream"))))
    summary.items = len(items)
    jobs: list[Job] = []
    for attempt in range(1, repeats + 1):
        for rid, route, body, stream in items:
            if (rid, attempt) in done:
                summary.skipped += 1
            else:
                jobs.append(Job(rid, route, body, stream, attempt))
    summary.planned = len(jobs)
    return jobs, summary


def _body(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Pacer:
    """Spaces call starts at least 1/rate seconds apart (no limit without a rate)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[errors]} errors"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


class Replay:
    """One replay run; `summary` is readable at any time, also after cancellation."""

    def __init__(
        self,
        settings: Settings,
        eval_set: str,
        candidate: str,
        *,
        repeats: int = 1,
        concurrency: int = 4,
        rate: float | None = None,
        retry_failed: bool = False,
        progress: bool = True,
        flush_every: int = FLUSH_EVERY,
    ) -> None:
        if concurrency < 1:
            raise InputError("--concurrency must be at least 1")
        if rate is not None and rate <= 0:
            raise InputError("--rate must be positive")
        self.candidate: CandidateSettings = settings.candidate(candidate)
        self.data_dir = Path(settings.storage.data_dir)
        self.eval_set = eval_set
        self.repeats = repeats
        self.concurrency = concurrency
        self.pacer = Pacer(rate)
        self.retry_failed = retry_failed
        self.show_progress = progress
        self.flush_every = max(1, flush_every)
        self.summary = ReplaySummary()
        self._pending: list[dict[str, Any]] = []
        self._writes: set[asyncio.Future[Any]] = set()
        self._writer = SegmentWriter(self.data_dir, default_writer_id("replay"))

    async def run(self) -> ReplaySummary:
        """Make every planned call; on cancellation, record what completed and re-raise."""
        jobs, _ = await asyncio.to_thread(
            plan,
            self.data_dir,
            self.eval_set,
            self.candidate.name,
            repeats=self.repeats,
            retry_failed=self.retry_failed,
            summary=self.summary,
        )
        if not jobs:
            return self.summary
        queue: asyncio.Queue[Job] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        progress = _progress(self.show_progress)
        label = f"replay {self.eval_set} -> {self.candidate.name}"
        task_id = progress.add_task(label, total=len(jobs), errors=0)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                client = ModelClient(session, self.candidate)
                with progress:
                    await run_all(
                        "replay",
                        [
                            self._worker(client, queue, progress, task_id)
                            for _ in range(min(self.concurrency, len(jobs)))
                        ],
                    )
        except asyncio.CancelledError:
            self.summary.interrupted = True
            raise
        finally:
            await self._finish_writes()
        return self.summary

    async def _worker(
        self,
        client: ModelClient,
        queue: asyncio.Queue[Job],
        progress: Progress,
        task_id: Any,
    ) -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await self.pacer.wait()
            outcome = await client.call(job.route, dict(job.body), stream=job.stream)
            row = outcome.to_row(
                request_id=job.request_id,
                target=self.candidate.name,
                source=SOURCE,
                model=self.candidate.model,
                cost_usd=client.cost_usd(outcome),
                attempt=job.attempt,
            )
            self._pending.append(row)
            self.summary.done += 1
            if outcome.error is not None:
                self.summary.errors[outcome.error] += 1
            progress.update(task_id, advance=1, errors=self.summary.failed)
            if len(self._pending) >= self.flush_every:
                await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        # In a thread, so calls in flight keep honest latencies; shielded and tracked, so a
        # batch handed to the writer is written, and waited for, even if the run is cancelled.
        write = asyncio.ensure_future(asyncio.to_thread(self._writer.write, "responses", batch))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        await asyncio.shield(write)

    async def _finish_writes(self) -> None:
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        batch, self._pending = self._pending, []
        if batch:
            self._writer.write("responses", batch)
