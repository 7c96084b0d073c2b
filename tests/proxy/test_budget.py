"""Token bucket, daily spend cap with UTC rollover, per-worker shares, spend read from the lake."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from proxy.budget import (
    DAILY_BUDGET,
    RATE_LIMIT,
    CandidateBudget,
    DailySpend,
    TokenBucket,
    recorded_spend,
)
from proxy.config import CandidateSettings
from proxy.lake.writer import write_rows


class Clock:
    """A hand-moved clock (seconds, or a UTC datetime)."""

    def __init__(self, start: float = 100.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


class Wall:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def cand(**kw: object) -> CandidateSettings:
    return CandidateSettings.model_validate(
        {"name": "c", "base_url": "http://127.0.0.1:9/v1", "model": "m", **kw}
    )


def takes(bucket: TokenBucket, n: int) -> int:
    return sum(bucket.try_take() for _ in range(n))


def test_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(4.0, clock=clock)
    assert takes(bucket, 100) == 4  # a burst of one second's worth
    clock.t += 0.5
    assert takes(bucket, 100) == 2
    clock.t += 0.1
    assert takes(bucket, 100) == 0  # 0.4 of a token: not yet
    clock.t += 0.15
    assert takes(bucket, 100) == 1
    clock.t += 3600
    assert takes(bucket, 100) == 4  # idle time does not bank more than the burst


def test_bucket_over_a_long_run_holds_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(2.5, clock=clock)
    allowed = 0
    for _ in range(10_000):  # 1,000 s of calls every 0.1 s
        clock.t += 0.1
        allowed += bucket.try_take()
    assert allowed == pytest.approx(2.5 * 1000, abs=3)


def test_slow_rates_and_explicit_bursts() -> None:
    clock = Clock()
    slow = TokenBucket(0.5, clock=clock)
    assert slow.burst == 1.0 and takes(slow, 5) == 1
    clock.t += 1.0
    assert takes(slow, 5) == 0
    clock.t += 1.0
    assert takes(slow, 5) == 1
    assert takes(TokenBucket(1.0, burst=10, clock=clock), 50) == 10
    with pytest.raises(ValueError):
        TokenBucket(0.0)


def test_daily_cap_stops_and_resets_at_utc_midnight() -> None:
    wall = Wall(datetime(2026, 3, 1, 23, 0, tzinfo=UTC))
    spend = DailySpend(1.0, clock=wall)
    assert spend.allows()
    spend.add(0.6)
    assert spend.allows() and spend.spent_today() == pytest.approx(0.6)
    spend.add(0.4)
    assert not spend.allows()  # at the cap: stop
    spend.add(5.0, day=date(2026, 2, 28))  # a late cost of another day does not count
    assert spend.spent_today() == pytest.approx(1.0)
    wall.now += timedelta(hours=1)  # 00:00 UTC
    assert spend.allows() and spend.spent_today() == 0.0
    assert DailySpend(None, clock=wall).allows()
    zero = DailySpend(0.0, clock=wall)
    assert not zero.allows()  # a zero budget mirrors nothing


def test_candidate_budget_reasons_and_worker_share() -> None:
    clock, wall = Clock(), Wall(datetime(2026, 3, 1, 12, tzinfo=UTC))
    b = CandidateBudget(cand(rate_per_s=10, daily_budget_usd=2.0), clock=clock, wall=wall)
    assert [b.admit() for _ in range(12)].count(None) == 10
    assert b.admit() == RATE_LIMIT
    b.spend.add(2.0)
    clock.t += 10
    assert b.admit() == DAILY_BUDGET  # the budget is checked first, no token is taken
    assert b.bucket is not None and b.bucket.tokens() == 10

    half = CandidateBudget(
        cand(rate_per_s=10, daily_budget_usd=2.0), share=0.5, clock=clock, wall=wall
    )
    assert half.bucket is not None and half.bucket.rate == 5.0
    assert half.spend.cap_usd == 1.0
    unlimited = CandidateBudget(cand(), clock=clock, wall=wall)
    assert unlimited.bucket is None and all(unlimited.admit() is None for _ in range(1000))


def test_recorded_spend_reads_todays_live_costs(tmp_path: Path) -> None:
    assert recorded_spend(tmp_path, ["a"], date(2026, 3, 2)) == {}
    t = datetime(2026, 3, 2, 10, tzinfo=UTC)

    def row(target: str, cost: float | None, when: datetime, source: str = "live") -> dict:
        return {
            "request_id": f"r-{target}-{when.isoformat()}-{cost}-{source}",
            "target": target,
            "source": source,
            "started_at": when,
            "cost_usd": cost,
        }

    write_rows(
        tmp_path,
        "responses",
        [
            row("a", 0.5, t),
            row("a", 0.25, t + timedelta(hours=1)),
            row("a", None, t),
            row("a", 9.0, t - timedelta(days=1)),  # yesterday
            row("a", 7.0, t, source="replay"),  # offline replays are not live spend
            row("b", 1.5, t),
            row("production", 3.0, t),
        ],
        kind="test",
    )
    got = recorded_spend(tmp_path, ["a", "b", "c"], date(2026, 3, 2))
    assert got == {"a": pytest.approx(0.75), "b": pytest.approx(1.5)}
