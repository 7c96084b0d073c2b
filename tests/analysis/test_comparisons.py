"""The comparisons table: DuckDB joins over a real Parquet lake, scored in Python, written back."""

import math
from datetime import timedelta

import duckdb
import numpy as np
import pytest

from analysis.comparisons import (
    build_comparisons,
    comparisons_view_sql,
    open_lake,
    resolve_eval_set,
    write_comparisons,
)
from analysis.settings import parse_analysis
from proxy.errors import InputError
from tests.analysis.lakefix import T0, LakeBuilder, logprobs_json


@pytest.fixture
def lake(tmp_path):
    b = LakeBuilder()
    for i, tag in enumerate(["email", "chat", "email", "chat"]):
        b.request(f"r{i}", tags=[tag], session="s-shared" if i < 2 else None)
        b.item("es1", f"r{i}", stratum=tag, inclusion_prob=0.5 if tag == "email" else 0.25)
        b.label(f"r{i}", "reference", "billing")
    b.request("r9", tags=["chat"])  # mirrored but not in the eval set
    # r0: all right; candidate has a dropped live call and a later replay.
    b.response("r0", "production", "Billing", logprobs=logprobs_json("Billing", 0.9))
    b.response("r0", "cand", None, error="dropped")
    b.response("r0", "cand", "billing", source="replay", at=T0 + timedelta(hours=2))
    # r1: production wrong; candidate times out.
    b.response("r1", "production", "refund", latency_ms=250.0, ttft_ms=80.0, cost_usd=0.002)
    b.response("r1", "cand", None, error="timeout", latency_ms=60000.0)
    # r2: a human says production's (scored-correct) answer is wrong; cand said the same.
    b.response("r2", "production", "billing")
    b.response("r2", "cand", "Billing!")
    b.label("r2", "verdict", {"correct": False}, target="production")
    # r3: the reference was corrected later: the newest label wins.
    b.response("r3", "production", "account")
    b.response("r3", "cand", "account", attempt=0)
    b.response("r3", "cand", "billing", source="replay", attempt=1, at=T0 + timedelta(hours=3))
    b.label("r3", "reference", "account", at=T0 + timedelta(days=2))
    b.response("r9", "production", "billing")
    b.response("r9", "cand", "billing")
    # A second, newer eval set.
    b.item("es2", "r9", at=T0 + timedelta(days=5))
    b.write(tmp_path)
    return tmp_path


def by_key(table):
    return {(r, t): i for i, (r, t) in enumerate(zip(table.request_id, table.target, strict=True))}


def test_rows_scores_and_origins(lake):
    con = open_lake(lake)
    s = parse_analysis({"confidence": "logprobs"})
    t = build_comparisons(con, s, "es1")
    assert len(t) == 8 and t.targets() == ["production", "cand"]
    k = by_key(t)
    expect = {
        ("r0", "production"): (1.0, "scorer"),
        ("r0", "cand"): (1.0, "scorer"),  # the replay, not the dropped call
        ("r1", "production"): (0.0, "scorer"),
        ("r1", "cand"): (0.0, "scorer"),  # a timeout is a wrong answer
        ("r2", "production"): (0.0, "verdict"),
        ("r2", "cand"): (0.0, "inherited"),
        ("r3", "production"): (1.0, "scorer"),  # corrected reference
        ("r3", "cand"): (0.0, "scorer"),  # latest attempt: the replay
    }
    for key, (correct, origin) in expect.items():
        i = k[key]
        assert (t.correct[i], t.origin[i]) == (correct, origin), key
    i = k[("r0", "cand")]
    assert t.source[i] == "replay" and t.observed[i] and not t.failed[i]
    i = k[("r1", "cand")]
    assert t.failed[i] and t.error[i] == "timeout"
    i = k[("r1", "production")]
    assert (t.latency_ms[i], t.ttft_ms[i], t.cost_usd[i]) == (250.0, 80.0, 0.002)
    # 0.9 for "Billing" plus 0.025 for its spelling variant "billing" in top_logprobs.
    assert t.confidence[k[("r0", "production")]] == pytest.approx(0.925)
    assert math.isnan(t.confidence[k[("r1", "production")]])
    assert t.weight[k[("r0", "cand")]] == 2.0 and t.weight[k[("r1", "cand")]] == 4.0
    assert t.stratum[k[("r1", "cand")]] == "chat"
    assert t.session_id[k[("r0", "cand")]] == "s-shared"
    assert t.session_id[k[("r2", "cand")]] == "r2"  # no session: its own cluster
    assert t.answer[k[("r2", "cand")]] == "billing"
    assert t.reference[k[("r3", "cand")]] == "account"


def test_only_unobserved_calls_leave_correctness_unknown(tmp_path):
    b = LakeBuilder()
    b.request("r0")
    b.item("es", "r0")
    b.label("r0", "reference", "billing")
    b.response("r0", "production", "billing")
    b.response("r0", "cand", None, error="budget")
    b.write(tmp_path)
    t = build_comparisons(open_lake(tmp_path), parse_analysis({}), "es")
    i = by_key(t)[("r0", "cand")]
    assert not t.observed[i] and math.isnan(t.correct[i]) and math.isnan(t.latency_ms[i])


def test_all_attempts_and_verdicts_reach_identical_attempts(lake):
    con = open_lake(lake)
    t = build_comparisons(con, parse_analysis({}), "es1", attempts="all")
    mask = (t.request_id == "r3") & (t.target == "cand")
    assert sorted(t.attempt[mask].tolist()) == [0, 1]
    assert sorted(t.correct[mask].tolist()) == [0.0, 1.0]
    mask = (t.request_id == "r0") & (t.target == "cand")
    assert mask.sum() == 2 and np.isnan(t.correct[mask]).sum() == 1  # the dropped call


def test_eval_set_resolution(lake):
    con = open_lake(lake)
    assert resolve_eval_set(con, None) == "es2"  # the newest
    assert resolve_eval_set(con, "es1") == "es1"
    with pytest.raises(InputError, match=r"unknown eval set 'nope'.*es2, es1"):
        resolve_eval_set(con, "nope")


def test_without_an_eval_set_every_labelled_request_counts(lake, tmp_path_factory):
    t = build_comparisons(open_lake(lake), parse_analysis({}), None)
    assert sorted(set(t.request_id.tolist())) == ["r0", "r1", "r2", "r3"]
    assert (t.weight == 1.0).all()
    empty = tmp_path_factory.mktemp("empty")
    con = open_lake(empty)
    assert resolve_eval_set(con, None) is None
    assert len(build_comparisons(con, parse_analysis({}), None)) == 0


def test_written_dataset_is_queryable_with_duckdb(lake):
    t = build_comparisons(open_lake(lake), parse_analysis({}), "es1")
    path = write_comparisons(lake, t)
    assert path.name == "comparisons.parquet" and path.parent.name == "eval_set=es1"
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT eval_set, target, sum(correct), count(*), any_value(tags) "
        f"FROM ({comparisons_view_sql(lake)}) WHERE labelled GROUP BY ALL ORDER BY target"
    ).fetchall()
    assert rows[0][:4] == ("es1", "cand", 1.0, 4)
    assert rows[1][:4] == ("es1", "production", 2.0, 4)
    cols = {d[0] for d in con.execute(f"DESCRIBE {comparisons_view_sql(lake)}").fetchall()}
    assert {"correct", "confidence", "latency_ms", "ttft_ms", "cost_usd", "tags", "stratum"} <= cols
    assert {"weight", "error"} <= cols and "output_text" not in cols


def test_lake_readers_and_the_catalog_see_the_comparisons_view(lake):
    from proxy.lake import catalog
    from proxy.lake.reader import connect

    write_comparisons(lake, build_comparisons(open_lake(lake), parse_analysis({}), "es1"))
    assert connect(lake).execute("SELECT count(*) FROM comparisons").fetchone()[0] > 0
    catalog.refresh(lake)
    con = catalog.connect(lake)
    try:
        assert con.execute("SELECT count(*) FROM comparisons").fetchone()[0] > 0
    finally:
        con.close()
