"""Eval sets: which recorded requests to label, drawn so results generalise to real traffic.

The population (the frame) is the requests in the lake - optionally only those in a date
range, on one route, or mirrored - with content, one per distinct prompt (`prompt_hash`;
the earliest is kept) and without `/v1/embeddings` unless that route is asked for. Each
request gets a stratum (`analysis/strata.py`) and the set is a stratified simple random
sample without replacement:

- allocation is proportional to stratum size, with `min_per_stratum` items (and at least
  one) in every stratum - a stratum smaller than that is taken whole;
- with `oversample_disagreement = F > 1`, each stratum is split into requests where a
  candidate's live output differs from production's after normalisation, and the rest;
  the first part gets F times its proportional share;
- every selected item stores its exact inclusion probability n_h / N_h of its (sub)stratum.
  With `only_mirrored`, the frame is itself a sample of traffic, so the probability is
  multiplied by the request's recorded `sample_rate` (two-phase sampling). Weighting by
  1 / inclusion_prob (Horvitz-Thompson) then estimates the whole frame without bias,
  however strata were over- or under-sampled.

An eval set is frozen: it is written once under its name and a second build with the same
name is refused. It can be exported as JSONL for other eval tools, and `status` says how
much of it is labelled, per stratum, and what is missing.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import duckdb
import numpy as np

from analysis.allocation import Population, Selection, select
from analysis.scoring import normalize
from analysis.strata import Strategy, assign_strata, prompt_text
from proxy.errors import InputError
from proxy.lake.reader import connect
from proxy.lake.writer import write_rows

EMBEDDINGS_ROUTE = "/v1/embeddings"
MAX_TEXT_CHARS = 2000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class BuildOptions:
    """What `evalset build` was asked for."""

    name: str
    size: int
    min_per_stratum: int = 0
    strata: Strategy = "auto"
    oversample_disagreement: float = 1.0
    seed: int = 0
    since: datetime | None = None
    until: datetime | None = None
    route: str | None = None
    only_mirrored: bool = False
    clusters: int | None = None


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InputError(
            f"invalid eval set name {name!r}: use letters, digits, '_', '.', '-' (at most 128)"
        )
    return name


_POPULATION_SQL = """
WITH req AS (
  SELECT request_id, received_at, route, tags, prompt_hash, sample_rate, {body} AS body
  FROM requests
  WHERE body IS NOT NULL
    AND ($since IS NULL OR received_at >= $since) AND ($until IS NULL OR received_at < $until)
    AND (CASE WHEN $route IS NULL THEN route IS DISTINCT FROM '{embeddings}'
              ELSE route = $route END)
    AND (NOT $only_mirrored OR coalesce(mirrored, false))
  QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY received_at) = 1
)
SELECT request_id, route, tags, sample_rate, body FROM req
QUALIFY prompt_hash IS NULL
     OR row_number() OVER (PARTITION BY prompt_hash ORDER BY received_at, request_id) = 1
ORDER BY request_id
"""


def _disagreements(con: duckdb.DuckDBPyConnection, request_ids: list[str]) -> np.ndarray:
    """Per request: does any candidate's live output differ from production's (normalised)?"""
    texts: dict[str, dict[str, str]] = defaultdict(dict)
    cur = con.execute(
        "SELECT request_id, target, output_text FROM responses "
        "WHERE source = 'live' AND error IS NULL AND output_text IS NOT NULL "
        "AND request_id IN (SELECT unnest($ids)) ORDER BY started_at",
        {"ids": request_ids},
    )
    while batch := cur.fetchmany(10_000):
        for rid, target, text in batch:
            texts[rid][target] = normalize(text)
    out = np.zeros(len(request_ids), dtype=bool)
    for i, rid in enumerate(request_ids):
        by_target = texts.get(rid, {})
        prod = by_target.get("production")
        if prod is not None:
            out[i] = any(t != prod for name, t in by_target.items() if name != "production")
    return out


def load_population(con: duckdb.DuckDBPyConnection, opts: BuildOptions) -> Population:
    """The frame for `opts`, with strata and (when oversampling) disagreement flags."""
    need_text = opts.strata in ("text", "auto")
    sql = _POPULATION_SQL.format(
        body="body" if need_text else "NULL",
        embeddings=EMBEDDINGS_ROUTE,
    )
    params = {
        "since": opts.since,
        "until": opts.until,
        "route": opts.route,
        "only_mirrored": opts.only_mirrored,
    }
    ids: list[str] = []
    routes: list[str | None] = []
    tags: list[list[str] | None] = []
    rates: list[float] = []
    texts: list[str] = []
    cur = con.execute(sql, params)
    while batch := cur.fetchmany(10_000):
        for rid, route, tag_list, rate, body in batch:
            ids.append(rid)
            routes.append(route)
            tags.append(tag_list)
            rates.append(1.0 if not opts.only_mirrored or rate is None else float(rate))
            texts.append(prompt_text(body)[:MAX_TEXT_CHARS] if need_text else "")
    if not ids:
        raise InputError("no recorded requests match (check --data, dates, --route)")
    strata = assign_strata(
        opts.strata, tags=tags, routes=routes, texts=texts, k=opts.clusters, seed=opts.seed
    )
    disagree = (
        _disagreements(con, ids)
        if opts.oversample_disagreement != 1.0
        else np.zeros(len(ids), dtype=bool)
    )
    return Population(ids, strata, disagree, np.asarray(rates, dtype=float))


def eval_set_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT DISTINCT eval_set FROM eval_sets").fetchall()}


@dataclass(frozen=True)
class BuildResult:
    """What was built: the selection and where its rows went."""

    name: str
    selection: Selection
    created_at: datetime
    disagreeing: int  # requests in the frame where a candidate disagreed with production


def build_eval_set(data_dir: str | Path, opts: BuildOptions) -> BuildResult:
    """Select and write a new, frozen eval set; an existing name is an error."""
    check_name(opts.name)
    if opts.oversample_disagreement < 1.0:
        raise InputError("--oversample-disagreement must be at least 1 (1 = no oversampling)")
    con = connect(data_dir)
    try:
        if opts.name in eval_set_names(con):
            raise InputError(
                f"eval set {opts.name!r} already exists and is frozen; build under a new name"
            )
        population = load_population(con, opts)
    finally:
        con.close()
    selection = select(
        population,
        opts.size,
        min_per_stratum=opts.min_per_stratum,
        oversample=opts.oversample_disagreement,
        seed=opts.seed,
    )
    created_at = datetime.now(UTC)
    rows = [
        {
            "eval_set": opts.name,
            "request_id": rid,
            "stratum": s,
            "inclusion_prob": p,
            "created_at": created_at,
        }
        for rid, s, p in zip(
            selection.request_ids, selection.strata, selection.inclusion_prob, strict=True
        )
    ]
    write_rows(data_dir, "eval_sets", rows, kind="evalset")
    return BuildResult(opts.name, selection, created_at, int(population.disagree.sum()))


def _require(con: duckdb.DuckDBPyConnection, name: str) -> None:
    if name not in eval_set_names(con):
        known = ", ".join(sorted(eval_set_names(con))) or "none yet"
        raise InputError(f"unknown eval set {name!r} (known: {known})")


_ITEMS_SQL = """
SELECT e.request_id, any_value(e.stratum) AS stratum, any_value(e.inclusion_prob) AS p,
       any_value(r.route) AS route, any_value(r.body) AS body, any_value(r.tags) AS tags
FROM eval_sets e LEFT JOIN requests r USING (request_id)
WHERE e.eval_set = $name GROUP BY e.request_id ORDER BY e.request_id
"""


def export_items(data_dir: str | Path, name: str) -> Iterator[dict[str, Any]]:
    """One JSON-ready dict per item: prompt, tags, stratum, weight and its newest labels."""
    con = connect(data_dir)
    try:
        _require(con, name)
        labels: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rid, kind, target, value, labeller, source in con.execute(
            "SELECT request_id, kind, target, value, labeller, source FROM labels_latest "
            "WHERE request_id IN (SELECT request_id FROM eval_sets WHERE eval_set = $name) "
            "ORDER BY request_id, kind, target",
            {"name": name},
        ).fetchall():
            entry = {"kind": kind, "target": target, "value": json.loads(value)}
            entry.update({"labeller": labeller, "source": source})
            labels[rid].append(entry)
        rows = con.execute(_ITEMS_SQL, {"name": name}).fetchall()
    finally:
        con.close()
    for rid, stratum, p, route, body, tags in rows:
        item: dict[str, Any] = {"request_id": rid, "route": route}
        item.update(_prompt_fields(body))
        item.update({"tags": list(tags or []), "stratum": stratum, "inclusion_prob": p})
        item["weight"] = 1.0 / p if p else None
        if labels.get(rid):
            item["labels"] = labels[rid]
            refs = [lab["value"] for lab in labels[rid] if lab["kind"] == "reference"]
            if refs:
                item["reference"] = refs[0]
        yield item


def _prompt_fields(body: str | None) -> dict[str, Any]:
    if body is None:
        return {"content_omitted": True}
    try:
        data = json.loads(body)
    except ValueError:
        return {"prompt": body}
    if not isinstance(data, dict):
        return {"prompt": data}
    out = {k: data[k] for k in ("messages", "prompt", "input", "instructions") if k in data}
    return out or {"body": data}


def export_eval_set(data_dir: str | Path, name: str, out: IO[str]) -> int:
    """Write the eval set as JSONL; returns the number of items."""
    n = 0
    for item in export_items(data_dir, name):
        out.write(json.dumps(item, ensure_ascii=False) + "\n")
        n += 1
    return n


@dataclass
class StratumStatus:
    """Labelling progress of one stratum (or of the whole set)."""

    stratum: str
    items: int = 0
    with_reference: int = 0
    with_verdict: int = 0
    labelled: int = 0  # a reference or at least one verdict: usable for accuracy

    @property
    def missing(self) -> int:
        return self.items - self.labelled


@dataclass
class EvalSetStatus:
    """How far labelling and outputs have come, and what is missing."""

    name: str
    created_at: datetime | None
    total: StratumStatus
    strata: list[StratumStatus]
    outputs: dict[str, int] = field(default_factory=dict)  # target -> items with an output
    missing_ids: list[str] = field(default_factory=list)  # first unlabelled request ids


_STATUS_SQL = """
WITH items AS (
  SELECT request_id, any_value(stratum) AS stratum FROM eval_sets
  WHERE eval_set = $name GROUP BY request_id
),
lab AS (
  SELECT request_id, bool_or(kind = 'reference') AS has_ref, bool_or(kind = 'verdict') AS has_verdict
  FROM labels WHERE request_id IN (SELECT request_id FROM items) GROUP BY request_id
)
SELECT i.request_id, i.stratum, coalesce(l.has_ref, false), coalesce(l.has_verdict, false)
FROM items i LEFT JOIN lab l USING (request_id) ORDER BY i.request_id
"""


def eval_set_status(data_dir: str | Path, name: str, max_missing: int = 20) -> EvalSetStatus:
    """Labelled counts overall and per stratum, outputs per target, and unlabelled ids."""
    con = connect(data_dir)
    try:
        _require(con, name)
        rows = con.execute(_STATUS_SQL, {"name": name}).fetchall()
        created = con.execute(
            "SELECT min(created_at) FROM eval_sets WHERE eval_set = $name", {"name": name}
        ).fetchone()
        outputs = dict(
            con.execute(
                "SELECT target, count(DISTINCT request_id) FROM responses "
                "WHERE error IS NULL AND output_text IS NOT NULL AND request_id IN "
                "(SELECT request_id FROM eval_sets WHERE eval_set = $name) "
                "GROUP BY target ORDER BY target",
                {"name": name},
            ).fetchall()
        )
    finally:
        con.close()
    total = StratumStatus("(all)")
    per: dict[str, StratumStatus] = {}
    missing: list[str] = []
    for rid, stratum, has_ref, has_verdict in rows:
        for st in (total, per.setdefault(stratum, StratumStatus(stratum))):
            st.items += 1
            st.with_reference += int(has_ref)
            st.with_verdict += int(has_verdict)
            st.labelled += int(has_ref or has_verdict)
        if not (has_ref or has_verdict) and len(missing) < max_missing:
            missing.append(rid)
    return EvalSetStatus(
        name,
        created[0] if created else None,
        total,
        [per[s] for s in sorted(per)],
        outputs,
        missing,
    )


def list_eval_sets(data_dir: str | Path) -> list[dict[str, Any]]:
    """Every eval set: name, items, strata, when it was built."""
    con = connect(data_dir)
    try:
        rows = con.execute(
            "SELECT eval_set, count(DISTINCT request_id), count(DISTINCT stratum), min(created_at) "
            "FROM eval_sets GROUP BY eval_set ORDER BY min(created_at), eval_set"
        ).fetchall()
    finally:
        con.close()
    return [{"name": r[0], "items": r[1], "strata": r[2], "created_at": r[3]} for r in rows]
