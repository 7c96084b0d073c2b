"""Agreement between labellers: Cohen's kappa per pair, so a team checks its labels first.

Each labeller's newest verdict on each (request, target) output is a category: its score
in [0, 1] (`correct` = 1, `incorrect` = 0, `partly` = 0.5). For every pair of labellers,
kappa compares the outputs both judged: (p_o - p_e) / (1 - p_e), where p_o is the share
they agree on and p_e the agreement expected from each one's own category frequencies.
Kappa is undefined (None) when p_e = 1 (both always gave the same one category).

Labellers are named as they were recorded; labels from a source other than `human`
(e.g. an LLM judge given a labeller name) are compared too, marked with their source.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from analysis.scoring import parse_verdict
from analysis.stats.agreement import cohen_kappa
from proxy.lake.reader import connect, retry_vanished


def kappa_or_none(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa from the statistics core; None where it is undefined (NaN there)."""
    value = cohen_kappa(a, b)
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class PairAgreement:
    """How two labellers agree on the outputs they both judged."""

    a: str
    b: str
    n: int  # outputs both judged
    items: int  # requests those outputs belong to
    observed: float  # share of outputs with the same verdict
    kappa: float | None


_VERDICTS_SQL = """
SELECT request_id, target, labeller, source, value FROM labels
WHERE kind = 'verdict' AND labeller IS NOT NULL AND target IS NOT NULL
  AND ($name IS NULL OR request_id IN (SELECT request_id FROM eval_sets WHERE eval_set = $name))
QUALIFY row_number() OVER (
  PARTITION BY request_id, target, labeller, source ORDER BY created_at DESC, label_id DESC
) = 1
"""


def rater_name(labeller: str, source: str | None) -> str:
    return labeller if source in (None, "human") else f"{labeller} [{source}]"


def read_verdicts(
    con: duckdb.DuckDBPyConnection, eval_set: str | None
) -> dict[str, dict[tuple[str, str], float]]:
    """Each rater's newest verdict score per (request, target) output."""
    out: dict[str, dict[tuple[str, str], float]] = {}
    rows = con.execute(_VERDICTS_SQL, {"name": eval_set}).fetchall()
    for rid, target, labeller, source, value in rows:
        score = parse_verdict(value)
        if not math.isnan(score):
            out.setdefault(rater_name(labeller, source), {})[(rid, target)] = score
    return out


def pair_agreements(verdicts: dict[str, dict[tuple[str, str], float]]) -> list[PairAgreement]:
    """Kappa for every pair of raters with at least one output in common, most overlap first."""
    pairs = []
    for a, b in itertools.combinations(sorted(verdicts), 2):
        common = sorted(set(verdicts[a]) & set(verdicts[b]))
        if not common:
            continue
        xa = [verdicts[a][k] for k in common]
        xb = [verdicts[b][k] for k in common]
        same = sum(x == y for x, y in zip(xa, xb, strict=True))
        pairs.append(
            PairAgreement(
                a,
                b,
                len(common),
                len({rid for rid, _ in common}),
                same / len(common),
                kappa_or_none(xa, xb),
            )
        )
    return sorted(pairs, key=lambda p: (-p.n, p.a, p.b))


def load_agreement(data_dir: str | Path, eval_set: str | None) -> list[PairAgreement]:
    """Pairwise agreement on an eval set's outputs (every labelled output when None)."""
    con = connect(data_dir)
    try:
        return pair_agreements(retry_vanished(lambda: read_verdicts(con, eval_set)))
    finally:
        con.close()
