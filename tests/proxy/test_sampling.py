"""Sampler: rates within binomial bounds, sticky keys, rules, opt-out, tags, inclusion probabilities.

Bounds are exact binomial intervals (scipy) at the two-sided level of 4 normal sigmas, so a
correct sampler fails a check about once in 16,000 runs; the random generators are seeded, so
in practice the tests are deterministic.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from scipy import stats

from proxy.config import SamplingSettings
from proxy.sampling import Sampler, sticky_uniform

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "gpt-prod", "messages": [{"role": "user", "content": "hi"}]}
N = 10_000
LEVEL = 1 - 2 * stats.norm.sf(4.0)


def sampler(rng_seed: int | None = 1, **kw: Any) -> Sampler:
    rng = random.Random(rng_seed) if rng_seed is not None else None
    return Sampler(SamplingSettings.model_validate(kw), rng=rng)


def within_binomial(k: int, n: int, p: float) -> bool:
    lo, hi = stats.binom.interval(LEVEL, n, p)
    return bool(lo <= k <= hi)


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_rate_holds_within_binomial_bound(rate: float) -> None:
    s = sampler(rate=rate, rng_seed=int(rate * 1000))
    decisions = [s.decide(CHAT, {}, BODY) for _ in range(N)]
    k = sum(d.mirrored for d in decisions)
    assert within_binomial(k, N, rate), (k, stats.binom.interval(LEVEL, N, rate))
    assert {d.sample_rate for d in decisions} == {rate}
    assert {d.reason for d in decisions} == {"sampled", "not_sampled"}


def test_rate_zero_and_one_are_exact() -> None:
    assert not any(sampler(rate=0.0).decide(CHAT, {}, BODY).mirrored for _ in range(1000))
    assert all(sampler(rate=1.0).decide(CHAT, {}, BODY).mirrored for _ in range(1000))
    keyed = sampler(rate=1.0, sticky_header="x-user-id")
    assert all(keyed.decide(CHAT, {"x-user-id": f"u{i}"}, BODY).mirrored for i in range(1000))


def test_sticky_keys_are_stable_and_hold_the_rate() -> None:
    a = sampler(rate=0.2, sticky_header="x-user-id", rng_seed=1)
    b = sampler(rate=0.2, sticky_header="X-User-Id", rng_seed=2)  # another process
    first = {
        f"user-{i}": a.decide(CHAT, {"X-USER-ID": f"user-{i}"}, BODY).mirrored for i in range(N)
    }
    for key, mirrored in list(first.items())[:500]:
        for _ in range(3):
            assert a.decide(CHAT, {"x-user-id": key}, BODY).mirrored == mirrored
        assert b.decide(CHAT, {"x-user-id": key}, BODY).mirrored == mirrored
    assert within_binomial(sum(first.values()), N, 0.2)
    # Without the header the decision falls back to a coin flip.
    flips = [a.decide(CHAT, {}, BODY).mirrored for _ in range(N)]
    assert within_binomial(sum(flips), N, 0.2)


def test_sticky_hash_is_uniform_and_nested_across_rates() -> None:
    u = [sticky_uniform("seed", f"k{i}") for i in range(N)]
    assert all(0.0 <= x < 1.0 for x in u)
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    low = sampler(rate=0.1, sticky_header="k")
    high = sampler(rate=0.5, sticky_header="k")
    for i in range(2000):
        h = {"k": f"k{i}"}
        if low.decide(CHAT, h, BODY).mirrored:
            assert high.decide(CHAT, h, BODY).mirrored  # mirrored at 10% => mirrored at 50%


def test_the_seed_changes_which_keys_are_mirrored() -> None:
    a = sampler(rate=0.5, sticky_header="k", seed="one")
    b = sampler(rate=0.5, sticky_header="k", seed="two")
    agree = sum(
        a.decide(CHAT, {"k": f"{i}"}, BODY).mirrored == b.decide(CHAT, {"k": f"{i}"}, BODY).mirrored
        for i in range(N)
    )
    assert within_binomial(agree, N, 0.5)  # independent: agree half the time


def test_rules_first_match_wins() -> None:
    s = sampler(
        rate=0.0,
        rules=[
            {"route": "/v1/embeddings", "rate": 0.0},
            {"headers": {"X-Priority": "urgent"}, "rate": 1.0},
            {"headers": {"x-beta": "*"}, "rate": 1.0},
            {"model": "gpt-rare", "rate": 1.0},
            {"tags": ["vip", "eu"], "rate": 1.0},
            {"route": CHAT, "rate": 0.0},
            {"headers": {"x-priority": "urgent"}, "rate": 0.5},  # shadowed by the rule above
        ],
    )
    urgent = s.decide(CHAT, {"x-priority": " urgent "}, BODY)
    assert urgent.mirrored and urgent.sample_rate == 1.0
    assert not s.decide("/v1/embeddings", {"x-priority": "urgent"}, {"input": "x"}).mirrored
    assert s.decide(CHAT, {"X-Beta": "anything"}, BODY).mirrored
    assert s.decide(CHAT, {}, {**BODY, "model": "gpt-rare"}).mirrored
    assert s.decide(CHAT, {"x-shadow-tags": "eu, vip"}, BODY).mirrored
    only_one_tag = s.decide(CHAT, {"x-shadow-tags": "vip"}, BODY)
    assert not only_one_tag.mirrored and only_one_tag.sample_rate == 0.0
    low = s.decide(CHAT, {"x-priority": "low"}, BODY)
    assert not low.mirrored and low.sample_rate == 0.0


def test_rule_rate_holds_and_is_recorded() -> None:
    s = sampler(rate=0.05, rules=[{"headers": {"x-tier": "gold"}, "rate": 0.7}])
    gold = [s.decide(CHAT, {"x-tier": "gold"}, BODY) for _ in range(N)]
    assert within_binomial(sum(d.mirrored for d in gold), N, 0.7)
    assert {d.sample_rate for d in gold} == {0.7}


@pytest.mark.parametrize(
    ("route", "headers", "body", "reason"),
    [
        ("/v1/models", {}, BODY, "unsupported_route"),
        ("/v1/audio/speech", {}, BODY, "unsupported_route"),
        ("/v1/completions", {}, BODY, "excluded_route"),
        (CHAT, {}, None, "not_json"),
        (CHAT, {"x-shadow-skip": "1"}, BODY, "opt_out"),
        (CHAT, {"X-Shadow-Skip": "yes"}, BODY, "opt_out"),
    ],
)
def test_never_mirrored_records_probability_zero(
    route: str, headers: dict[str, str], body: dict[str, Any] | None, reason: str
) -> None:
    s = sampler(
        rate=1.0,
        exclude_routes=["/v1/completions"],
        rules=[{"route": route, "rate": 1.0}],
    )
    d = s.decide(route, {**headers, "x-shadow-tags": "a", "x-session-id": "s1"}, body)
    assert (d.mirrored, d.sample_rate, d.reason) == (False, 0.0, reason)
    assert d.tags == ["a"] and d.session_id == "s1"  # still recorded for subsets


def test_skip_header_off_values_do_not_opt_out() -> None:
    s = sampler(rate=1.0)
    for value in ("0", "false", "", "no"):
        assert s.decide(CHAT, {"x-shadow-skip": value}, BODY).mirrored


def test_tags_from_header_and_body_fields() -> None:
    s = sampler(
        rate=0.0,
        tag_fields=[
            {"path": "metadata.queue", "prefix": "queue:"},
            {"path": "metadata.labels"},
            {"path": "metadata.flag", "prefix": "flag="},
            {"path": "metadata.missing.deep"},
            {"path": "messages.role"},  # not a mapping on the way: no tag
        ],
    )
    body = {
        **BODY,
        "metadata": {"queue": "billing", "labels": ["a", "b", {"x": 1}, 3], "flag": True},
    }
    d = s.decide(CHAT, {"x-shadow-tags": " urgent, ,a,urgent "}, body)
    assert d.tags == ["urgent", "a", "queue:billing", "b", "3", "flag=true"]
    long = s.decide(CHAT, {"x-shadow-tags": ",".join(f"t{i}" + "x" * 200 for i in range(50))}, BODY)
    assert len(long.tags) == 32 and all(len(t) == 100 for t in long.tags)


def test_session_id_from_configured_header() -> None:
    assert sampler().decide(CHAT, {"X-Session-Id": " abc "}, BODY).session_id == "abc"
    assert sampler().decide(CHAT, {}, BODY).session_id is None
    custom = sampler(session_header="x-conversation")
    assert (
        custom.decide(CHAT, {"x-conversation": "c9", "x-session-id": "s"}, BODY).session_id == "c9"
    )
    assert sampler(session_header=None).decide(CHAT, {"x-session-id": "s"}, BODY).session_id is None


def test_recorded_rates_are_inclusion_probabilities() -> None:
    """Weighting mirrored requests by 1/sample_rate recovers the true traffic (Horvitz-Thompson).

    5% of requests are 'urgent' and oversampled at 100%; the rest are mirrored at 10%.
    """
    s = sampler(rate=0.1, rules=[{"tags": ["urgent"], "rate": 1.0}], rng_seed=11)
    rng = random.Random(5)
    urgent = [rng.random() < 0.05 for _ in range(N)]
    decisions = [s.decide(CHAT, {"x-shadow-tags": "urgent"} if u else {}, BODY) for u in urgent]
    est_total = sum(1 / d.sample_rate for d in decisions if d.mirrored)
    est_urgent = sum(
        1 / d.sample_rate for d, u in zip(decisions, urgent, strict=True) if d.mirrored and u
    )
    var = sum((1 - d.sample_rate) / d.sample_rate for d in decisions)  # HT variance, fixed pop
    assert abs(est_total - N) <= 4 * var**0.5
    assert est_urgent == sum(urgent)  # sampled with certainty: exact
    naive = sum(u for d, u in zip(decisions, urgent, strict=True) if d.mirrored) / sum(
        d.mirrored for d in decisions
    )
    assert naive > 0.2  # unweighted, the oversampled subset looks 4x more common than it is


def test_without_candidates_nothing_is_mirrored_but_tags_and_sessions_are_kept() -> None:
    s = Sampler(
        SamplingSettings.model_validate({"rate": 1.0, "session_header": "x-session-id"}),
        has_candidates=False,
    )
    d = s.decide(CHAT, {"x-shadow-tags": "a,b", "x-session-id": "s1"}, BODY)
    assert (d.mirrored, d.sample_rate, d.reason) == (False, 0.0, "no_candidates")
    assert d.tags == ["a", "b"] and d.session_id == "s1"
