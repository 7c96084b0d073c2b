"""The `comparisons` table: one row per (request, target) of an eval set, scored.

DuckDB joins the eval set's items with their requests, the calls recorded for them (live
and replay; the latest observed attempt per target, or every attempt) and the newest
labels. Python then applies the configured scorers, verdict labels and confidence
extraction, and returns numpy columns. `write_comparisons` stores the result as Parquet
under `<data_dir>/comparisons/eval_set=<name>/` so users can query it in SQL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa

from analysis.confidence import confidences
from analysis.scoring import (
    Extraction,
    Verdict,
    answer_label,
    apply_verdicts,
    decode_label_value,
    parse_verdict,
    reference_text,
    score_outputs,
)
from analysis.settings import AnalysisSettings, ScorerRule
from proxy.errors import InputError
from proxy.lake.reader import connect
from proxy.lake.writer import write_table_atomic

# Calls that never reached the model: shadow bounds, not the model's failure.
UNOBSERVED_ERRORS = ("dropped", "budget")
COMPARISONS_DIR = "comparisons"

LABELS_LATEST_SQL = """
SELECT * FROM labels
QUALIFY row_number() OVER (
    PARTITION BY request_id, kind, target ORDER BY created_at DESC, label_id DESC) = 1
"""


def open_lake(data_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """The lake's views, including `labels_latest` (the newest label per request, kind, target)."""
    con = connect(data_dir)
    con.execute("SET enable_progress_bar = false")
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    if "labels_latest" not in views:
        con.execute(f"CREATE VIEW labels_latest AS {LABELS_LATEST_SQL}")
    return con


def resolve_eval_set(con: duckdb.DuckDBPyConnection, name: str | None) -> str | None:
    """The eval set to analyse: the one named, else the newest; None when there is none."""
    known = [
        r[0]
        for r in con.execute(
            "SELECT eval_set FROM eval_sets GROUP BY eval_set ORDER BY max(created_at) DESC"
        ).fetchall()
    ]
    if name is None:
        return known[0] if known else None
    if name not in known:
        listed = ", ".join(known) or "none yet"
        raise InputError(f"unknown eval set {name!r} (known: {listed})")
    return name


_ITEMS_EVAL_SET = """
SELECT request_id, any_value(stratum) AS stratum, any_value(inclusion_prob) AS inclusion_prob
FROM eval_sets WHERE eval_set = $eval_set GROUP BY request_id
"""
# Without an eval set: every request that has a reference or verdict label, unweighted.
_ITEMS_LABELLED = """
SELECT request_id, CAST(NULL AS VARCHAR) AS stratum, CAST(NULL AS DOUBLE) AS inclusion_prob
FROM labels WHERE kind IN ('reference', 'verdict') AND $eval_set IS NULL GROUP BY request_id
"""


def _rows_sql(items_sql: str, attempts: str, logprobs: bool = True) -> str:
    keep = "" if attempts == "all" else "WHERE resp.rn = 1"
    # The logprobs column is large: read it only when confidence comes from it.
    lp = "logprobs" if logprobs else "CAST(NULL AS VARCHAR) AS logprobs"
    return f"""
WITH items AS ({items_sql}),
req AS (
  SELECT request_id, route, tags, session_id FROM requests
  WHERE request_id IN (SELECT request_id FROM items)
  QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY received_at) = 1
),
resp AS (
  SELECT request_id, target, source, coalesce(attempt, 0) AS attempt, error, status,
         latency_ms, ttft_ms, cost_usd, output_text, {lp},
         row_number() OVER (
           PARTITION BY request_id, target
           ORDER BY coalesce(error IN {UNOBSERVED_ERRORS}, false), started_at DESC,
                    attempt DESC) AS rn
  FROM responses WHERE request_id IN (SELECT request_id FROM items)
),
ref AS (
  SELECT request_id, value FROM labels_latest
  WHERE kind = 'reference' AND request_id IN (SELECT request_id FROM items)
  QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY created_at DESC) = 1
)
SELECT i.request_id, resp.target, resp.source, resp.attempt, resp.rn, req.route,
       coalesce(req.tags, []) AS tags, coalesce(req.session_id, i.request_id) AS session_id,
       coalesce(i.stratum, req.tags[1], req.route, 'all') AS stratum,
       coalesce(i.inclusion_prob, 1.0) AS inclusion_prob,
       resp.error, resp.status, resp.latency_ms, resp.ttft_ms, resp.cost_usd,
       resp.output_text, resp.logprobs, ref.value AS reference
FROM items i
JOIN resp ON resp.request_id = i.request_id
LEFT JOIN req ON req.request_id = i.request_id
LEFT JOIN ref ON ref.request_id = i.request_id
{keep}
ORDER BY i.request_id, resp.target, resp.rn
"""


@dataclass
class ComparisonTable:
    """Column arrays, one entry per (request, target) (or per attempt with attempts='all')."""

    eval_set: str | None
    request_id: np.ndarray
    target: np.ndarray
    source: np.ndarray
    attempt: np.ndarray
    route: np.ndarray
    tags: np.ndarray  # object array of lists of strings
    session_id: np.ndarray
    stratum: np.ndarray
    inclusion_prob: np.ndarray
    weight: np.ndarray
    error: np.ndarray  # None or the error kind
    failed: np.ndarray  # the model failed to answer (timeout, connect, http, invalid)
    observed: np.ndarray  # the call reached the model (not dropped by shadow bounds)
    latency_ms: np.ndarray
    ttft_ms: np.ndarray
    cost_usd: np.ndarray
    scorer: np.ndarray  # scorer kind used for the row
    reference: np.ndarray  # reference text, or None
    answer: np.ndarray  # extracted answer, normalised, or None
    score: np.ndarray  # in [0, 1]; NaN when unknown
    correct: np.ndarray  # 1.0 / 0.0 / NaN (score >= 0.5)
    origin: np.ndarray  # 'verdict' | 'inherited' | 'scorer' | None
    confidence: np.ndarray  # NaN when unknown
    rule_index: np.ndarray  # position of the scorer rule in settings.scorers; -1: the fallback
    output_text: np.ndarray  # kept for the judge; not written to the comparisons dataset

    def __len__(self) -> int:
        return len(self.request_id)

    def targets(self) -> list[str]:
        """Targets present, production first."""
        names = sorted(set(self.target.tolist()))
        return sorted(names, key=lambda t: (t != "production", t))

    def select(self, mask: np.ndarray) -> ComparisonTable:
        """The rows where `mask` is true."""
        cols: dict[str, Any] = {
            f.name: getattr(self, f.name)[mask] for f in fields(self) if f.name != "eval_set"
        }
        return ComparisonTable(eval_set=self.eval_set, **cols)

    def to_arrow(self) -> pa.Table:
        """The table as Arrow, ready to write as Parquet."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("eval_set", "output_text"):
                continue
            col = getattr(self, f.name)
            if f.name == "tags":
                out[f.name] = pa.array([list(t) for t in col], pa.list_(pa.string()))
            elif col.dtype == object:
                out[f.name] = pa.array(col.tolist(), pa.string())
            else:
                out[f.name] = pa.array(col)
        out["labelled"] = pa.array(~np.isnan(self.correct))
        return pa.table(out)


def _objects(values: Sequence[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def _verdicts(
    con: duckdb.DuckDBPyConnection, items_sql: str, eval_set: str | None
) -> dict[tuple[str, str], Verdict]:
    rows = con.execute(
        f"""WITH items AS ({items_sql})
        SELECT request_id, target, value, epoch(created_at), source FROM labels_latest
        WHERE kind = 'verdict' AND target IS NOT NULL
          AND request_id IN (SELECT request_id FROM items)""",
        {"eval_set": eval_set},
    ).fetchall()
    return {
        (r[0], r[1]): Verdict(parse_verdict(decode_label_value(r[2])), float(r[3] or 0), r[4])
        for r in rows
    }


def build_comparisons(
    con: duckdb.DuckDBPyConnection,
    settings: AnalysisSettings,
    eval_set: str | None,
    *,
    attempts: Literal["latest", "all"] = "latest",
) -> ComparisonTable:
    """Join, score and return the comparisons of an eval set (or of all labelled requests)."""
    items_sql = _ITEMS_EVAL_SET if eval_set is not None else _ITEMS_LABELLED
    data = con.sql(
        _rows_sql(items_sql, attempts, settings.confidence.method == "logprobs"),
        params={"eval_set": eval_set},
    ).to_arrow_table()
    cols = {name: data.column(name).to_pylist() for name in data.column_names}
    n = data.num_rows
    errors = cols["error"]
    observed = np.array([e not in UNOBSERVED_ERRORS for e in errors], dtype=bool)
    failed = np.array([e is not None and e not in UNOBSERVED_ERRORS for e in errors], dtype=bool)
    texts: list[str | None] = [
        t if ok else None for t, ok in zip(cols["output_text"], observed, strict=True)
    ]
    refs = [decode_label_value(v) for v in cols["reference"]]

    by_rule: dict[int, int] = {}  # id(rule) -> index into rules
    rules: list[ScorerRule] = []
    rule_idx = np.empty(n, dtype=np.int64)
    for i, (route, tags) in enumerate(zip(cols["route"], cols["tags"], strict=True)):
        rule = settings.scorer_for(route, tags)
        if id(rule) not in by_rule:
            by_rule[id(rule)] = len(rules)
            rules.append(rule)
        rule_idx[i] = by_rule[id(rule)]

    scores = np.full(n, math.nan)
    found: list[Extraction] = [Extraction(None, None)] * n
    for j, rule in enumerate(rules):
        idx = np.flatnonzero(rule_idx == j).tolist()
        s, f = score_outputs(rule, [texts[k] for k in idx], [refs[k] for k in idx])
        scores[idx] = s
        for k, ex in zip(idx, f, strict=True):
            found[k] = ex
    # An unobserved call says nothing about the model.
    scores[~observed] = math.nan

    # Own verdicts apply to the latest attempt; other attempts inherit through identical text.
    keys = [
        t if rn == 1 else f"{t}\0{rn}" for t, rn in zip(cols["target"], cols["rn"], strict=True)
    ]
    final, origin = apply_verdicts(
        cols["request_id"], keys, texts, scores.tolist(), _verdicts(con, items_sql, eval_set)
    )
    score = np.array(final, dtype=float)
    score[~observed] = math.nan
    correct = np.where(np.isnan(score), math.nan, (score >= 0.5).astype(float))
    conf = confidences(settings.confidence, texts, cols["logprobs"], found)
    inclusion = _floats(cols["inclusion_prob"])
    inclusion = np.where((inclusion > 0) & (inclusion <= 1), inclusion, 1.0)
    latency = _floats(cols["latency_ms"])
    latency[~observed] = math.nan

    return ComparisonTable(
        eval_set=eval_set,
        request_id=_objects(cols["request_id"]),
        target=_objects(cols["target"]),
        source=_objects(cols["source"]),
        attempt=np.array(cols["attempt"], dtype=np.int64),
        route=_objects(cols["route"]),
        tags=_objects([list(t) for t in cols["tags"]]),
        session_id=_objects(cols["session_id"]),
        stratum=_objects(cols["stratum"]),
        inclusion_prob=inclusion,
        weight=1.0 / inclusion,
        error=_objects(errors),
        failed=failed,
        observed=observed,
        latency_ms=latency,
        ttft_ms=_floats(cols["ttft_ms"]),
        cost_usd=_floats(cols["cost_usd"]),
        scorer=_objects([rules[j].kind for j in rule_idx]),
        reference=_objects([reference_text(r) for r in refs]),
        answer=_objects([answer_label(f) for f in found]),
        score=score,
        correct=correct,
        origin=_objects([o if ok else None for o, ok in zip(origin, observed, strict=True)]),
        confidence=conf,
        rule_index=np.array([_position(settings, r) for r in rules] or [0], dtype=np.int64)[
            rule_idx
        ],
        output_text=_objects(texts),
    )


def _position(settings: AnalysisSettings, rule: ScorerRule) -> int:
    return next((i for i, r in enumerate(settings.scorers) if r is rule), -1)


def write_comparisons(data_dir: str | Path, table: ComparisonTable) -> Path:
    """Store the table as `<data_dir>/comparisons/eval_set=<name>/comparisons.parquet`."""
    name = table.eval_set if table.eval_set is not None else "_labelled"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = Path(data_dir) / COMPARISONS_DIR / f"eval_set={safe}" / "comparisons.parquet"
    return write_table_atomic(table.to_arrow(), path)


def comparisons_view_sql(data_dir: str | Path) -> str:
    """A SELECT over every stored comparisons file (eval_set is the hive partition)."""
    glob = str(Path(data_dir).resolve() / COMPARISONS_DIR / "eval_set=*" / "*.parquet")
    return f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"


def register_comparisons_view(data_dir: str | Path, *, lock_timeout_s: float = 2.0) -> bool:
    """Refresh `<data_dir>/catalog.duckdb` so it has the `comparisons` view; False when it cannot now.

    The lake's catalog creates the view whenever comparisons exist; this only asks for a
    refresh, never creates a catalog that is not there, and gives up quietly while another
    process holds the file.
    """
    from proxy.errors import LakeError
    from proxy.lake import catalog

    if not catalog.catalog_path(data_dir).exists():
        return False
    try:
        catalog.refresh(data_dir, lock_timeout_s=lock_timeout_s)
    except LakeError:
        return False
    return True
