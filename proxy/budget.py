"""Per-candidate spending limits: shadow calls per second, and US dollars per UTC day.

A candidate may be a paid API: mirroring must never cost more than the team agreed to.
`TokenBucket` caps the call rate (`candidates[].rate_per_s`, bursts up to one second's
worth); `DailySpend` stops mirroring once today's recorded cost reaches
`candidates[].daily_budget_usd` and starts again when the UTC date changes. Costs are only
known once a call has finished, so calls already in flight may overshoot the cap by at most
`max_concurrency` calls. Both limits are totals for the deployment: with several worker
processes each enforces its `share` (1/N) of them, which is exact when the load balancer
spreads requests evenly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from pathlib import Path

from proxy.config import CandidateSettings
from proxy.lake.reader import connect, retry_vanished

RATE_LIMIT = "rate_limit"
DAILY_BUDGET = "daily_budget"


def _utc_now() -> datetime:
    """The wall clock in UTC (replaced by a fake one in tests)."""
    return datetime.now(UTC)


class TokenBucket:
    """`rate_per_s` calls per second on average; up to `burst` at once after a quiet spell."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(
        self,
        rate_per_s: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.rate = rate_per_s
        self.burst = burst if burst is not None else max(1.0, rate_per_s)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def tokens(self) -> float:
        """Calls that could be made right now."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return self._tokens

    def try_take(self) -> bool:
        """Take one call's token if there is one; never waits."""
        if self.tokens() >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class DailySpend:
    """Today's (UTC) spend against a cap; resets when the date changes."""

    __slots__ = ("_clock", "_day", "_spent", "cap_usd")

    def __init__(self, cap_usd: float | None, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.cap_usd = cap_usd
        self._clock = clock
        self._day = clock().date()
        self._spent = 0.0

    def _roll(self) -> None:
        """Start a new day at 0 when the UTC date has changed."""
        today = self._clock().date()
        if today != self._day:
            self._day, self._spent = today, 0.0

    def spent_today(self) -> float:
        """Dollars counted today (UTC)."""
        self._roll()
        return self._spent

    def allows(self) -> bool:
        """True while today's spend is below the cap (always, without a cap)."""
        return self.cap_usd is None or self.spent_today() < self.cap_usd

    def add(self, usd: float, day: date | None = None) -> None:
        """Count a cost on `day` (today by default; a cost of another day is ignored)."""
        self._roll()
        if day is None or day == self._day:
            self._spent += usd


class CandidateBudget:
    """Both limits of one candidate; `admit()` says why a call may not be made, if it may not."""

    __slots__ = ("bucket", "spend")

    def __init__(
        self,
        candidate: CandidateSettings,
        *,
        share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utc_now,
    ) -> None:
        rate = candidate.rate_per_s
        cap = candidate.daily_budget_usd
        self.bucket = (
            TokenBucket(rate * share, max(1.0, rate * share), clock=clock) if rate else None
        )
        self.spend = DailySpend(cap * share if cap is not None else None, clock=wall)

    def admit(self) -> str | None:
        """None to go ahead (a rate token is taken), else `daily_budget` or `rate_limit`."""
        if not self.spend.allows():
            return DAILY_BUDGET
        if self.bucket is not None and not self.bucket.try_take():
            return RATE_LIMIT
        return None


def recorded_spend(data_dir: Path, targets: Iterable[str], day: date) -> dict[str, float]:
    """Live shadow spend per candidate already in the lake for `day` (after a restart).

    Blocking (DuckDB over Parquet): run it in a thread. Rows still in another process's
    buffer are not seen, which at most lets one flush interval of calls through again.
    """
    names = sorted(set(targets))
    if not names or not (Path(data_dir) / "responses").is_dir():
        return {}
    con = connect(data_dir)
    try:
        rows = retry_vanished(
            lambda: con.execute(
                "SELECT target, coalesce(sum(cost_usd), 0) FROM responses "
                "WHERE date = $day AND source = 'live' AND list_contains($names, target) "
                "GROUP BY target",
                {"day": day, "names": names},
            ).fetchall()
        )
    finally:
        con.close()
    return {str(t): float(v) for t, v in rows}
