"""What the labelling UI reads from the lake and writes back to it.

Reading: the eval set's items (stratum, request body), the output each target gave (the
latest observed call per target, as the analysis picks it, so a verdict here judges the
output the report scores) and the human labels that decide what is left to do. Writing:
label rows checked by the same rules as `labels import` (`proxy.lake.labels`), written
as one Parquet segment per submission.

A flag is an `outcome` label with no target and the value `{"flag": true, "reason": ...}`;
the newest human flag label of a request decides whether it is flagged (an import of
`{"flag": false}` lifts it). Flagged items leave the queue.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from proxy.errors import InputError
from proxy.lake.labels import LakeIndex, finish, parse_all
from proxy.lake.reader import connect, retry_vanished
from proxy.lake.writer import write_rows

SOURCE = "human"
UNOBSERVED = "('dropped', 'budget')"


@dataclass(frozen=True)
class Output:
    """One target's answer to an item, as the labeller judges it."""

    target: str
    text: str
    finish_reason: str | None


@dataclass
class Item:
    """One eval-set request: where it sits, what was asked and every judgeable output."""

    request_id: str
    stratum: str
    route: str | None
    body: str | None
    outputs: dict[str, Output] = field(default_factory=dict)


@dataclass
class HumanLabels:
    """The human labels that decide what is left: verdicts by (request, target), flags."""

    # (request_id, target) -> labellers who gave a verdict (None for an unnamed import).
    verdicts: dict[tuple[str, str], set[str | None]] = field(
        default_factory=lambda: defaultdict(set)
    )
    flagged: set[str] = field(default_factory=set)
    # request_id -> labellers with any human verdict or flag on it (who may see the reveal).
    labellers: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def add_verdict(self, request_id: str, target: str, labeller: str | None) -> None:
        self.verdicts[(request_id, target)].add(labeller)
        if labeller is not None:
            self.labellers[request_id].add(labeller)


@dataclass
class Snapshot:
    """The eval set as the lake had it at one moment."""

    eval_set: str
    items: dict[str, Item]
    labels: HumanLabels


def eval_set_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every eval set in the lake, newest first."""
    rows = con.execute(
        "SELECT eval_set FROM eval_sets GROUP BY eval_set ORDER BY max(created_at) DESC, eval_set"
    ).fetchall()
    return [r[0] for r in rows]


def open_eval_set(data_dir: str | Path, name: str | None) -> Snapshot:
    """Read the eval set to label: the one named, or the newest; InputError when there is none."""
    if not Path(data_dir).is_dir():
        raise InputError(f"no lake at {data_dir}: the directory does not exist")
    con = connect(data_dir)
    try:
        chosen = resolve_eval_set(data_dir, retry_vanished(lambda: eval_set_names(con)), name)
        return retry_vanished(lambda: read_snapshot(con, chosen))
    finally:
        con.close()


def resolve_eval_set(data_dir: str | Path, names: list[str], name: str | None) -> str:
    """The name to label among the lake's eval sets (newest first); InputError if none fits."""
    if not names:
        raise InputError(
            f"the lake at {data_dir} has no eval set: build one with `shadoweval evalset build`"
        )
    if name is None:
        return names[0]
    if name not in names:
        raise InputError(f"no eval set named {name!r}; known: {', '.join(sorted(names))}")
    return name


_ITEMS_SQL = """
WITH items AS (
  SELECT request_id, any_value(stratum) AS stratum FROM eval_sets
  WHERE eval_set = $name GROUP BY request_id
),
req AS (
  SELECT request_id, route, body FROM requests
  WHERE request_id IN (SELECT request_id FROM items)
  QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY received_at) = 1
)
SELECT i.request_id, coalesce(i.stratum, 'all'), req.route, req.body
FROM items i LEFT JOIN req USING (request_id)
"""

_OUTPUTS_SQL = f"""
SELECT request_id, target, error, output_text, finish_reason FROM responses
WHERE request_id IN (SELECT request_id FROM eval_sets WHERE eval_set = $name)
QUALIFY row_number() OVER (
  PARTITION BY request_id, target
  ORDER BY coalesce(error IN {UNOBSERVED}, false), started_at DESC, coalesce(attempt, 0) DESC
) = 1
"""

_LABELS_SQL = """
SELECT request_id, kind, target, labeller, value FROM labels
WHERE source = 'human' AND kind IN ('verdict', 'outcome')
  AND request_id IN (SELECT request_id FROM eval_sets WHERE eval_set = $name)
ORDER BY created_at, label_id
"""


def flag_value(raw: str | None) -> bool | None:
    """True/False when a label's JSON value is a flag object, None for any other outcome."""
    try:
        value = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("flag"), bool):
        return bool(value["flag"])
    return None


def read_snapshot(con: duckdb.DuckDBPyConnection, eval_set: str) -> Snapshot:
    """Items, outputs and human labels of one eval set from an open lake."""
    params = {"name": eval_set}
    items: dict[str, Item] = {}
    for rid, stratum, route, body in con.execute(_ITEMS_SQL, params).fetchall():
        items[rid] = Item(rid, str(stratum), route, body)
    for rid, target, error, text, finish_reason in con.execute(_OUTPUTS_SQL, params).fetchall():
        if rid in items and error is None and text is not None and target is not None:
            items[rid].outputs[target] = Output(target, text, finish_reason)
    labels = HumanLabels()
    for rid, kind, target, labeller, value in con.execute(_LABELS_SQL, params).fetchall():
        if kind == "verdict" and target is not None:
            labels.add_verdict(rid, target, labeller)
            continue
        flag = flag_value(value)
        if flag is None:
            continue
        # Rows come oldest first, so the last flag label of a request decides.
        if flag:
            labels.flagged.add(rid)
        else:
            labels.flagged.discard(rid)
        if labeller is not None:
            labels.labellers[rid].add(labeller)
    return Snapshot(eval_set, items, labels)


def load_snapshot(data_dir: str | Path, eval_set: str) -> Snapshot:
    """Open the lake and read one eval set (blocking: run it in a thread from the app)."""
    con = connect(data_dir)
    try:
        return retry_vanished(lambda: read_snapshot(con, eval_set))
    finally:
        con.close()


def label_rows(
    request_id: str,
    labeller: str,
    verdicts: Mapping[str, Any],
    *,
    reference: str | None = None,
    flag_reason: str | None = None,
    targets: Iterable[str] = (),
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """`labels` rows for one submission, checked as an import would be; InputError if bad."""
    items: list[dict[str, Any]] = [
        {"request_id": request_id, "kind": "verdict", "target": t, "value": v}
        for t, v in sorted(verdicts.items())
    ]
    if reference is not None and reference.strip():
        items.append({"request_id": request_id, "kind": "reference", "value": reference})
    if flag_reason is not None:
        value = {"flag": True, "reason": flag_reason.strip()}
        items.append({"request_id": request_id, "kind": "outcome", "value": value})
    numbered = [(i, {**it, "labeller": labeller, "source": SOURCE}) for i, it in enumerate(items)]
    parsed, errors = parse_all(numbered, default_source=SOURCE)
    index = LakeIndex(targets={request_id: set(targets) | set(verdicts)})
    result = finish(parsed, errors, index, now or datetime.now(UTC))
    if not result.ok:
        raise InputError("; ".join(e.reason for e in result.errors))
    return result.rows


def write_labels(data_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    """Append label rows to the lake as one segment (blocking)."""
    if rows:
        write_rows(data_dir, "labels", rows, kind="labelui")
