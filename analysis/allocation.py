"""The sampling design of an eval set: allocation to strata and a seeded stratified draw.

Stratified simple random sampling without replacement: each stratum h of N_h requests gets
n_h items (proportional to N_h, at least a minimum, never more than N_h), optionally split
into two parts (requests where candidates disagree with production, and the rest) with the
first part oversampled by a factor. Each item's inclusion probability is exactly n/N of
the part it was drawn from, times its probability of being in the frame at all
(`first_phase`), so 1/probability weights (Horvitz-Thompson) are unbiased for the frame.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from proxy.errors import InputError


@dataclass
class Population:
    """The frame: parallel arrays, one entry per distinct eligible request, sorted by id."""

    request_ids: list[str]
    strata: list[str]
    disagree: np.ndarray  # bool: a candidate's live output differs from production's
    first_phase: np.ndarray  # P(in the frame): sample_rate with only_mirrored, else 1

    def __len__(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True)
class Selection:
    """Selected request ids with their stratum and inclusion probability."""

    request_ids: list[str]
    strata: list[str]
    inclusion_prob: list[float]
    allocation: dict[str, int]  # stratum -> items selected
    population: dict[str, int]  # stratum -> frame size


def allocate(
    caps: Mapping[str, int],
    weights: Mapping[str, float],
    n: int,
    minimum: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Split n items over keys ∝ weight, each within [minimum, cap]; largest remainders round.

    The caller makes sure sum(min(minimum, cap)) <= n <= sum(caps).
    """
    lo = {k: min((minimum or {}).get(k, 0), caps[k]) for k in caps}
    fixed: dict[str, float] = {}
    while True:
        free = [k for k in caps if k not in fixed]
        budget = n - sum(fixed.values())
        total_w = sum(weights[k] for k in free)
        ideal = {k: budget * weights[k] / total_w if total_w > 0 else 0.0 for k in free}
        over = [k for k in free if ideal[k] > caps[k]]
        under = [k for k in free if ideal[k] < lo[k]]
        if over:
            fixed.update({k: caps[k] for k in over})
        elif under:
            fixed.update({k: lo[k] for k in under})
        else:
            break
    out = {k: int(v) for k, v in fixed.items()}
    out.update({k: int(np.floor(v)) for k, v in ideal.items()})
    short = n - sum(out.values())
    by_fraction = sorted(ideal, key=lambda k: (-(ideal[k] - np.floor(ideal[k])), k))
    for k in by_fraction:
        if short <= 0:
            break
        if out[k] < caps[k]:
            out[k] += 1
            short -= 1
    return out


def _split_allocation(n_h: int, n_dis: int, n_agree: int, factor: float) -> tuple[int, int]:
    """Items for the disagreeing and agreeing parts of one stratum (both > 0 when possible)."""
    if n_dis == 0 or n_agree == 0 or n_h < 2 or factor == 1.0:
        return -1, -1  # no split: sample the stratum as one
    got = allocate(
        {"d": n_dis, "a": n_agree},
        {"d": factor * n_dis, "a": float(n_agree)},
        n_h,
        {"d": 1, "a": 1},
    )
    return got["d"], got["a"]


def select(
    population: Population,
    size: int,
    *,
    min_per_stratum: int = 0,
    oversample: float = 1.0,
    seed: int = 0,
) -> Selection:
    """Draw the stratified sample (seeded) and each item's exact inclusion probability."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(population.strata):
        members[s].append(i)
    sizes = {s: len(ix) for s, ix in members.items()}
    n, total = size, len(population)
    if n < 1:
        raise InputError("--size must be at least 1")
    if n > total:
        raise InputError(f"--size {n} is more than the {total} distinct requests that match")
    floor = max(min_per_stratum, 1)
    needed = sum(min(floor, c) for c in sizes.values())
    if needed > n:
        raise InputError(
            f"--size {n} is too small for {len(sizes)} strata with at least {floor} item(s) "
            f"each: it needs at least {needed} (use a bigger size, a smaller minimum or "
            "coarser strata)"
        )
    per_stratum = allocate(
        sizes, {s: float(c) for s, c in sizes.items()}, n, {s: floor for s in sizes}
    )
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    strata: list[str] = []
    probs: list[float] = []
    for s in sorted(members):
        idx = np.asarray(members[s])
        dis = idx[population.disagree[idx]]
        agree = idx[~population.disagree[idx]]
        n_d, n_a = _split_allocation(per_stratum[s], len(dis), len(agree), oversample)
        parts = [(idx, per_stratum[s])] if n_d < 0 else [(dis, n_d), (agree, n_a)]
        for part, k in parts:
            if k == 0:
                continue
            chosen = np.sort(rng.choice(len(part), size=k, replace=False))
            for j in part[chosen]:
                ids.append(population.request_ids[j])
                strata.append(s)
                probs.append(float(k / len(part) * population.first_phase[j]))
    return Selection(ids, strata, probs, per_stratum, sizes)
