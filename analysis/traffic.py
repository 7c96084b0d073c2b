"""Figures over every recorded call, labelled or not: speed, failures, spend and agreement.

These need no labels, so they use all the traffic (far more than the eval set): DuckDB
aggregates the `responses` dataset and hands back plain arrays and counts. Agreement with
production compares extracted answers (the scorer's extraction, so formatting differences
do not count) on requests both answered; it is an early signal, not accuracy. Answers are
extracted once per distinct output text; past `agreement_max_n` requests a deterministic
uniform sample by request id is used, and the count says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from analysis.scoring import answer_label, extract
from analysis.settings import FALLBACK_RULE, AnalysisSettings

UNOBSERVED = "('dropped', 'budget')"


@dataclass(frozen=True)
class TrafficFigures:
    """One target's calls: counts, and the raw values statistics are computed from."""

    target: str
    calls: int  # calls that reached the model
    unobserved: int  # dropped or over budget: never sent, not the model's doing
    errors: int  # timeout, connect, http, invalid
    timeouts: int
    latency_ms: np.ndarray  # successful calls
    ttft_ms: np.ndarray  # successful streaming calls
    latency_all_ms: np.ndarray  # every reached call; a failure counts as +inf (for SLO share)
    cost_usd: np.ndarray  # calls with a known cost
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Agreement:
    """How often a target gave production's answer, on requests both answered."""

    target: str
    agree: int
    n: int
    sampled: bool  # True when only a sample of requests was compared


# Per call: 0 answered, 1 failed (connect, http, invalid), 2 unobserved, 3 timed out.
_CALLS_SQL = f"""
SELECT latency_ms, ttft_ms, cost_usd,
       CAST(CASE WHEN error IS NULL THEN 0 WHEN error IN {UNOBSERVED} THEN 2
                 WHEN error = 'timeout' THEN 3 ELSE 1 END AS TINYINT) AS code
FROM responses WHERE target = $t
"""


def _floats(column: np.ndarray) -> np.ndarray:
    """A DuckDB numeric column as floats with NULL as NaN (fetchnumpy masks NULLs, and a
    plain float cast would turn them into 0.0: a non-streamed call's missing TTFT is not 0 ms)."""
    return np.ma.filled(np.ma.asarray(column).astype(float), np.nan)


def _figures(con: duckdb.DuckDBPyConnection, target: str, sources: list[str]) -> TrafficFigures:
    cols = con.execute(_CALLS_SQL, {"t": target}).fetchnumpy()
    latency = _floats(cols["latency_ms"])
    ttft = _floats(cols["ttft_ms"])
    cost = _floats(cols["cost_usd"])
    code = np.asarray(cols["code"])
    ok = code == 0
    reached = code != 2
    failed = reached & ~ok
    answered = np.sort(latency[ok & np.isfinite(latency)])
    n_failed = int(failed.sum())
    return TrafficFigures(
        target=target,
        calls=int(reached.sum()),
        unobserved=int((~reached).sum()),
        errors=n_failed,
        timeouts=int((code == 3).sum()),
        latency_ms=answered,
        ttft_ms=np.sort(ttft[ok & np.isfinite(ttft)]),
        latency_all_ms=np.concatenate([answered, np.full(n_failed, np.inf)]),
        cost_usd=cost[reached & np.isfinite(cost)],
        sources=tuple(x for x in sources if x is not None),
    )


def traffic_figures(con: duckdb.DuckDBPyConnection) -> dict[str, TrafficFigures]:
    """Per target, over every recorded call (live and replay); latencies come sorted."""
    targets = con.execute(
        "SELECT target, list(DISTINCT source ORDER BY source) FROM responses "
        "WHERE target IS NOT NULL GROUP BY target ORDER BY target"
    ).fetchall()
    return {t: _figures(con, t, sources) for t, sources in targets}


def _rule_index(settings: AnalysisSettings, route: str | None, tags: list[str] | None) -> int:
    rule = settings.scorer_for(route, tags)
    return next((i for i, r in enumerate(settings.scorers) if r is rule), -1)


def _rule_keys(con: duckdb.DuckDBPyConnection, settings: AnalysisSettings) -> pa.Table:
    combos = con.execute("SELECT DISTINCT route, coalesce(tags, []) FROM requests").fetchall()
    keys = [(route or "") + "\x1f" + "\x1e".join(tags) for route, tags in combos]
    rules = [_rule_index(settings, route, tags) for route, tags in combos]
    return pa.table({"combo": pa.array(keys, pa.string()), "rule": pa.array(rules, pa.int64())})


def _latest_sql(sample: str, by_request: bool) -> str:
    """The latest answered call per (request, target), with the index of its scorer rule."""
    latest = f"""
      SELECT request_id, target, arg_max(output_text, started_at) AS text
      FROM responses
      WHERE error IS NULL AND output_text IS NOT NULL {sample}
        AND target IN (SELECT unnest($targets))
      GROUP BY request_id, target"""
    if not by_request:
        return f"SELECT request_id, target, text, $rule AS rule FROM ({latest})"
    return f"""
    WITH r AS ({latest}),
    q AS (
      SELECT request_id,
             any_value(coalesce(route, '') || chr(31) || array_to_string(coalesce(tags, []), chr(30)))
               AS combo
      FROM requests WHERE true {sample} GROUP BY request_id
    )
    SELECT r.request_id, r.target, r.text, coalesce(k.rule, -1) AS rule
    FROM r LEFT JOIN q USING (request_id) LEFT JOIN _rule_keys k ON k.combo = q.combo"""


def agreement_with_production(
    con: duckdb.DuckDBPyConnection, settings: AnalysisSettings, targets: list[str]
) -> dict[str, Agreement]:
    """For each non-production target: agreements and comparisons with production's answers."""
    others = [t for t in targets if t != "production"]
    if not others:
        return {}
    row = con.execute("SELECT count(*) FROM responses WHERE target <> 'production'").fetchone()
    # Requests per candidate, roughly: enough to choose a sampling fraction.
    total = (int(row[0]) if row else 0) / len(others)
    sampled = total > settings.agreement_max_n
    sample = (
        f"AND hash(request_id) < {int(settings.agreement_max_n / total * 2**64)}::UBIGINT"
        if sampled
        else ""
    )
    # When no rule looks at route or tags, every request has the same scorer.
    by_request = any(r.route is not None or r.tag is not None for r in settings.scorers)
    params: dict[str, object] = {"targets": ["production", *others]}
    if by_request:
        con.register("_rule_keys", _rule_keys(con, settings))
    else:
        params["rule"] = _rule_index(settings, None, None)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _latest AS {_latest_sql(sample, by_request)}", params
    )
    distinct = con.execute("SELECT DISTINCT rule, text FROM _latest").fetchall()
    answers = [
        answer_label(extract(settings.scorers[rule] if rule >= 0 else FALLBACK_RULE, text))
        for rule, text in distinct
    ]
    con.register(
        "_answers",
        pa.table(
            {
                "rule": pa.array([d[0] for d in distinct], pa.int64()),
                "text": pa.array([d[1] for d in distinct], pa.string()),
                "answer": pa.array(answers, pa.string()),
            }
        ),
    )
    rows = con.execute(
        """WITH a AS (
             SELECT l.request_id, l.target, coalesce(x.answer, '') AS answer
             FROM _latest l JOIN _answers x ON x.rule = l.rule AND x.text = l.text
           )
           SELECT c.target, count(*) FILTER (WHERE c.answer = p.answer), count(*)
           FROM a c JOIN a p ON p.request_id = c.request_id AND p.target = 'production'
           WHERE c.target <> 'production' GROUP BY c.target"""
    ).fetchall()
    con.unregister("_answers")
    if by_request:
        con.unregister("_rule_keys")
    con.execute("DROP TABLE IF EXISTS _latest")
    found = {t: Agreement(t, int(k), int(n), sampled) for t, k, n in rows}
    return {t: found.get(t, Agreement(t, 0, 0, sampled)) for t in others}
