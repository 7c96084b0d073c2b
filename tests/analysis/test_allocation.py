"""The sampling design: allocation bounds, and inclusion probabilities that make HT unbiased."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.allocation import Population, allocate, select
from proxy.errors import InputError


def population(sizes: dict[str, int], disagree_share: float = 0.0, seed: int = 1) -> Population:
    rng = np.random.default_rng(seed)
    strata = [s for s, n in sizes.items() for _ in range(n)]
    ids = [f"r{i:05d}" for i in range(len(strata))]
    disagree = rng.random(len(strata)) < disagree_share
    return Population(ids, strata, disagree, np.ones(len(strata)))


def test_proportional_allocation_sums_and_rounds() -> None:
    caps = {"a": 700, "b": 200, "c": 100}
    got = allocate(caps, {k: float(v) for k, v in caps.items()}, 100)
    assert got == {"a": 70, "b": 20, "c": 10}
    got = allocate(caps, {k: float(v) for k, v in caps.items()}, 101)
    assert sum(got.values()) == 101 and got["a"] == 71  # the largest remainder


def test_minimums_and_caps() -> None:
    caps = {"big": 10_000, "mid": 500, "tiny": 3}
    w = {k: float(v) for k, v in caps.items()}
    got = allocate(caps, w, 300, {k: 40 for k in caps})
    assert got["tiny"] == 3  # taken whole
    assert got["mid"] == 40  # its proportional share (14) is under the minimum
    assert got["big"] == 257 and sum(got.values()) == 300
    # Everything: each stratum at its cap.
    assert allocate(caps, w, sum(caps.values())) == caps


def test_select_sizes_minimums_and_errors() -> None:
    pop = population({"email": 900, "chat": 90, "voice": 10})
    sel = select(pop, 100, min_per_stratum=20, seed=3)
    assert len(sel.request_ids) == len(set(sel.request_ids)) == 100
    assert sel.allocation == {"email": 70, "chat": 20, "voice": 10}
    counts = {s: sel.strata.count(s) for s in sel.allocation}
    assert counts == sel.allocation
    # Proportional by default, but never an empty stratum (its items would have probability 0).
    plain = select(pop, 50, seed=3)
    assert plain.allocation == {"email": 45, "chat": 4, "voice": 1}
    with pytest.raises(InputError, match="more than the 1000"):
        select(pop, 1001)
    with pytest.raises(InputError, match="needs at least 50"):
        select(pop, 49, min_per_stratum=20)
    with pytest.raises(InputError, match="at least 1"):
        select(pop, 0)


def test_same_seed_same_selection() -> None:
    pop = population({"a": 300, "b": 300}, disagree_share=0.3)
    one = select(pop, 40, oversample=3.0, seed=9)
    two = select(pop, 40, oversample=3.0, seed=9)
    assert one == two
    assert select(pop, 40, oversample=3.0, seed=10).request_ids != one.request_ids


def test_weights_add_up_to_the_frame_exactly() -> None:
    """For stratified SRS, sum(1/pi) over the sample is N in every draw."""
    pop = population({"a": 1200, "b": 300, "c": 37}, disagree_share=0.2)
    for seed in range(5):
        sel = select(pop, 150, min_per_stratum=25, oversample=5.0, seed=seed)
        assert sum(1 / p for p in sel.inclusion_prob) == pytest.approx(len(pop))


def test_horvitz_thompson_is_unbiased_where_the_plain_mean_is_not() -> None:
    """A synthetic population with known truth: strata of unequal accuracy and oversampled
    disagreements (which are mostly wrong). Over many draws the HT mean sits within a few
    standard errors of the truth; the unweighted mean is far off."""
    rng = np.random.default_rng(42)
    sizes = {"common": 1500, "rare": 120, "odd": 30}
    pop = population(sizes, disagree_share=0.15, seed=7)
    strata = np.array(pop.strata)
    base = np.select([strata == "common", strata == "rare"], [0.9, 0.6], 0.3)
    p_correct = np.where(pop.disagree, base * 0.3, base)
    y = (rng.random(len(pop)) < p_correct).astype(float)
    truth = y.mean()
    index = {rid: i for i, rid in enumerate(pop.request_ids)}
    ht, plain = [], []
    hits = np.zeros(len(pop))
    reps = 600
    for seed in range(reps):
        sel = select(pop, 120, min_per_stratum=20, oversample=4.0, seed=seed)
        ix = np.array([index[r] for r in sel.request_ids])
        probs = np.array(sel.inclusion_prob)
        ht.append(float((y[ix] / probs).sum() / len(pop)))
        plain.append(float(y[ix].mean()))
        hits[ix] += 1
        if seed == 0:
            stored = dict(zip(sel.request_ids, sel.inclusion_prob, strict=True))
    ht_arr, plain_arr = np.array(ht), np.array(plain)
    se = ht_arr.std(ddof=1) / np.sqrt(reps)
    assert abs(ht_arr.mean() - truth) < 4 * se
    assert abs(plain_arr.mean() - truth) > 10 * plain_arr.std(ddof=1) / np.sqrt(reps)
    assert plain_arr.mean() < truth  # disagreements (mostly wrong) were oversampled
    # Each item is drawn about as often as its stored probability says (uniform within a part).
    for mask in (
        (strata == "common") & pop.disagree,
        (strata == "common") & ~pop.disagree,
        (strata == "odd") & ~pop.disagree,
    ):
        some = [r for r in np.array(pop.request_ids)[mask] if r in stored]
        pi = stored[some[0]]
        assert all(stored[r] == pi for r in some)
        z = (hits[mask] / reps - pi) / np.sqrt(pi * (1 - pi) / reps)
        assert np.abs(z).max() < 5.0
    # Oversampling: a disagreeing item of 'common' is about 4x as likely as an agreeing one.
    dis = stored[next(r for r in stored if pop.disagree[index[r]] and strata[index[r]] == "common")]
    agr = stored[
        next(r for r in stored if not pop.disagree[index[r]] and strata[index[r]] == "common")
    ]
    assert dis / agr == pytest.approx(4.0, rel=0.15)


def test_first_phase_probability_multiplies() -> None:
    pop = population({"a": 100})
    pop.first_phase[:] = 0.25
    sel = select(pop, 10, seed=0)
    assert sel.inclusion_prob == [pytest.approx(0.025)] * 10
