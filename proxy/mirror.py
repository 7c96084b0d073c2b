"""Shadow calls to the candidate models: bounded, in the background, each one recorded.

The proxy hands a sampled request to `Mirror.submit` once it has been sent to production.
`submit` never waits: for every enabled candidate it either queues one shadow call or, when
a bound is hit, records at once why the call was not made. Each candidate has its own lane:
a queue of at most `max_queue` waiting calls, `max_concurrency` workers making them, and its
budget (`rate_per_s`, `daily_budget_usd`). A slow or dead candidate fills only its own lane;
production, and the other candidates, never wait for it.

Every shadow call becomes exactly one `responses` row (target = candidate name, source =
`live`): its answer and timings, or its error kind - `timeout`, `connect`, `http`, `invalid`
from the call itself, `dropped` (queue full, or cancelled at shutdown) and `budget` (rate or
daily spend) for calls that were not made or not finished. On shutdown (`close(grace_s)`)
queued and in-flight calls get the grace period; what is still running is then cancelled
and recorded as `dropped`, so nothing disappears silently.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry

from proxy.budget import CandidateBudget, recorded_spend
from proxy.config import CandidateSettings, Settings
from proxy.lake.rows import OMIT_KEY
from proxy.mirror_metrics import MirrorMetrics
from proxy.model_transport import candidate_pool
from proxy.modelclient import CallOutcome, ModelClient
from proxy.tasks import TaskSet
from proxy.upstream import UpstreamPool

log = structlog.get_logger("shadoweval.mirror")

SOURCE = "live"


class RowRecorder(Protocol):
    """What the mirror needs of the recorder: a non-blocking `record`."""

    def record(self, dataset: str, row: dict[str, Any]) -> bool: ...


@dataclass(slots=True)
class _Job:
    """One shadow call waiting in a lane."""

    request_id: str
    route: str
    body: dict[str, Any]
    stream: bool
    omit: bool


class _Lane:
    """One candidate's queue, workers' count, budget and metric children."""

    def __init__(
        self, candidate: CandidateSettings, budget: CandidateBudget, metrics: MirrorMetrics
    ) -> None:
        self.candidate = candidate
        self.name = candidate.name
        self.budget = budget
        self.capacity = candidate.max_concurrency + candidate.max_queue
        self.queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self.in_flight = 0
        self.client: ModelClient | None = None
        self._key = (self.name,)
        self._metrics = metrics
        metrics.calls.touch(self._key)
        metrics.latency.touch(self._key)
        metrics.ttft.touch(self._key)
        metrics.in_flight.labels(self.name).set_function(lambda: self.in_flight)
        metrics.queue_depth.labels(self.name).set_function(self.queue.qsize)
        metrics.spend.labels(self.name).set_function(budget.spend.spent_today)

    def outstanding(self) -> int:
        """Calls queued or running: bounded by max_concurrency + max_queue."""
        return self.queue.qsize() + self.in_flight

    def skipped(self, reason: str) -> None:
        """Count a call that was not made."""
        self._metrics.skipped.inc((self.name, reason))

    def error(self, kind: str) -> None:
        """Count a call that failed."""
        self._metrics.errors.inc((self.name, kind))

    def made(self, outcome: CallOutcome) -> None:
        """Count a call that was made, and time it when it succeeded."""
        metrics, key = self._metrics, self._key
        metrics.calls.inc(key)
        if outcome.error is None:
            if outcome.latency_ms is not None:
                metrics.latency.observe(key, outcome.latency_ms / 1000.0)
            if outcome.ttft_ms is not None:
                metrics.ttft.observe(key, outcome.ttft_ms / 1000.0)
        else:
            self.error(outcome.error)


class Mirror:
    """Owns every shadow call of one proxy process (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        recorder: RowRecorder,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._settings = settings
        self._recorder = recorder
        self.metrics = MirrorMetrics(registry or CollectorRegistry(auto_describe=True))
        # Rate and spend limits are deployment totals: each of N workers takes 1/N of them.
        share = 1.0 / max(1, settings.server.workers)
        self._lanes = [
            _Lane(c, CandidateBudget(c, share=share), self.metrics)
            for c in settings.candidates
            if c.enabled
        ]
        self._share = share
        self._tasks = TaskSet("mirror")
        self._pools: list[UpstreamPool] = []
        self._running = False
        self._closed = False

    @property
    def candidates(self) -> list[str]:
        """Names of the candidates this mirror calls (the enabled ones)."""
        return [lane.name for lane in self._lanes]

    async def start(self) -> None:
        """Open the candidates' connection pool and start each lane's workers."""
        if self._running or self._closed:
            return
        if self._lanes:
            await self._seed_spend()
            for lane in self._lanes:
                c = lane.candidate
                # One lean keep-alive pool per candidate (the live path's own HTTP client):
                # a shadow call costs a fraction of what it costs through aiohttp's client.
                pool = candidate_pool(c)
                self._pools.append(pool)
                lane.client = ModelClient(pool, c)
                for i in range(c.max_concurrency):
                    self._tasks.spawn(self._work(lane), f"{lane.name}-{i}")
        self._running = True
        if self._lanes:
            log.info("mirror started", candidates=self.candidates)

    async def _seed_spend(self) -> None:
        """Count today's spend already in the lake, so a restart does not reset the caps."""
        capped = [lane for lane in self._lanes if lane.budget.spend.cap_usd is not None]
        if not capped:
            return
        today = datetime.now(UTC).date()
        try:
            spent = await asyncio.to_thread(
                recorded_spend,
                self._settings.storage.data_dir,
                [lane.name for lane in capped],
                today,
            )
        except Exception as exc:
            log.warning("today's recorded spend could not be read; caps start at 0", error=str(exc))
            return
        for lane in capped:
            lane.budget.spend.add(spent.get(lane.name, 0.0) * self._share, day=today)

    def submit(
        self,
        request_id: str,
        route: str,
        body: dict[str, Any],
        stream: bool,
        *,
        omit_content: bool = False,
    ) -> None:
        """Queue one shadow call per enabled candidate, or record at once why it was not made.

        Never waits and never raises for a full queue or a spent budget. `body` is the parsed
        production request; it is not modified. `omit_content` (the request asked for its
        content not to be stored) applies to the shadow rows too.
        """
        for lane in self._lanes:
            job = _Job(request_id, route, body, stream, omit_content)
            if not self._running:
                self._not_made(lane, job, "dropped", "closed", "mirror not running")
            elif lane.outstanding() >= lane.capacity:
                self._not_made(lane, job, "dropped", "queue_full", "queue full")
            else:
                reason = lane.budget.admit()
                if reason is not None:
                    self._not_made(lane, job, "budget", reason, reason.replace("_", " "))
                else:
                    lane.queue.put_nowait(job)

    def _not_made(self, lane: _Lane, job: _Job, error: str, reason: str, detail: str) -> None:
        """Record at once a call that will not be made (its row says why)."""
        lane.skipped(reason)
        self._record(lane, job, CallOutcome.not_made(error, detail, stream=job.stream), None)

    def _record(self, lane: _Lane, job: _Job, outcome: CallOutcome, cost: float | None) -> None:
        """The one `responses` row of a shadow call."""
        row = outcome.to_row(
            request_id=job.request_id,
            target=lane.name,
            source=SOURCE,
            model=lane.candidate.model,
            cost_usd=cost,
        )
        if job.omit:
            row[OMIT_KEY] = True
        self._recorder.record("responses", row)

    async def _work(self, lane: _Lane) -> None:
        """One worker of a lane: make queued calls one at a time until told to stop."""
        while True:
            job = await lane.queue.get()
            if job is None:
                return
            lane.in_flight += 1
            try:
                await self._call(lane, job)
            finally:
                lane.in_flight -= 1

    async def _call(self, lane: _Lane, job: _Job) -> None:
        """Make one call and record it; cancelled, it records itself as dropped."""
        assert lane.client is not None
        started, t0 = datetime.now(UTC), time.perf_counter()
        try:
            outcome = await lane.client.call(job.route, job.body, stream=job.stream)
        except asyncio.CancelledError:
            outcome = CallOutcome(
                None,
                "dropped",
                "cancelled at shutdown",
                started,
                None,
                (time.perf_counter() - t0) * 1000.0,
                None,
                job.stream,
            )
            lane.error("dropped")
            self._record(lane, job, outcome, None)
            raise
        except Exception as exc:  # a bug, not a candidate failure: still one row
            log.exception("shadow call failed unexpectedly", candidate=lane.name)
            outcome = CallOutcome.not_made(
                "dropped", f"internal error: {type(exc).__name__}", stream=job.stream
            )
            lane.error("dropped")
            self._record(lane, job, outcome, None)
            return
        cost = lane.client.cost_usd(outcome)
        if cost:
            lane.budget.spend.add(cost, day=outcome.started_at.date())
        lane.made(outcome)
        self._record(lane, job, outcome, cost)

    async def close(self, grace_s: float) -> None:
        """Stop taking calls; give queued and running ones `grace_s`, then cancel and count them."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        for lane in self._lanes:
            for _ in range(lane.candidate.max_concurrency):
                lane.queue.put_nowait(None)  # after the queued calls: they drain first
        finished = await self._tasks.wait(within_s=max(0.0, grace_s))
        if not finished:
            await self._tasks.cancel_all()  # running calls record themselves as dropped
        left = 0
        for lane in self._lanes:
            while not lane.queue.empty():
                job = lane.queue.get_nowait()
                if job is not None:
                    left += 1
                    self._not_made(lane, job, "dropped", "shutdown", "not started before shutdown")
        for pool in self._pools:
            await pool.close()
        if self._lanes:
            log.info("mirror closed", drained=finished, not_started=left)
