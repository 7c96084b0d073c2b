"""`evaluate()` end to end on synthetic lakes with a known truth, checked against direct computation."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from analysis.evaluate import evaluate
from analysis.settings import parse_analysis
from proxy.lake import catalog
from tests.analysis.lakefix import LakeBuilder, TargetSpec, synthetic_lake

SCENARIO = {
    # The demo's point: B is more accurate but overconfident and slow; C a little less
    # accurate, calibrated and cheap; production in between.
    "production": TargetSpec(0.86, latency_ms=700, cost_usd=0.0012),
    "B": TargetSpec(0.93, "overconfident", latency_ms=1500, cost_usd=0.003),
    "C": TargetSpec(0.84, latency_ms=300, cost_usd=0.0003, error_rate=0.01),
    "twin": TargetSpec(0.86, latency_ms=700, cost_usd=0.0012, replica_of_production=True),
}
SETTINGS = {
    "confidence": "logprobs",
    "slo": {"latency_p95_ms": 1200, "ttft_p95_ms": 400},
    "constraints": {"max_error_rate": 0.05},
    "cost_matrix": {"billing->refund": 20, "default": 1},
    "replicas": ["twin"],
    "min_n": 30,
    "n_boot": 500,
}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    data = tmp_path_factory.mktemp("lake")
    truth = synthetic_lake(data, 400, SCENARIO, seed=3, n_unlabelled=600)
    catalog.refresh(data)
    report = evaluate(data, parse_analysis(SETTINGS))
    return data, truth, report


def test_accuracy_and_paired_figures_match_the_truth(scenario):
    _, truth, report = scenario
    for name in ("production", "B", "C"):
        t = report.target(name)
        assert t.n_labelled == 400
        assert t.accuracy.value == pytest.approx(truth[name].mean())
        assert t.accuracy.lo < t.accuracy.value < t.accuracy.hi
    b = report.target("B").paired
    assert b.diff.value == pytest.approx(truth["B"].mean() - truth["production"].mean())
    assert b.b == int(np.sum(truth["B"] & ~truth["production"]))
    assert b.c == int(np.sum(~truth["B"] & truth["production"]))
    assert b.n == 400
    assert report.target("production").paired is None


def test_traffic_figures_use_every_call(scenario):
    data, _, report = scenario
    con = duckdb.connect()
    lat = con.execute(
        f"SELECT latency_ms FROM read_parquet('{data}/responses/*/*.parquet') "
        "WHERE target = 'C' AND error IS NULL"
    ).fetchnumpy()["latency_ms"]
    c = report.target("C")
    assert c.latency.n == len(lat) and c.reliability.calls == 1000
    assert c.latency.p50.value == pytest.approx(np.quantile(lat, 0.5), rel=0.02)
    assert c.latency.p95.lo <= np.quantile(lat, 0.95) <= c.latency.p95.hi
    errors = con.execute(
        f"SELECT count(*) FROM read_parquet('{data}/responses/*/*.parquet') "
        "WHERE target = 'C' AND error IS NOT NULL"
    ).fetchone()[0]
    assert c.reliability.error_rate.value == pytest.approx(errors / 1000)
    assert c.cost.per_1k.value == pytest.approx(0.3)
    assert c.latency.cdf[0][1] == 0.0 and c.latency.cdf[-1][1] == 1.0
    assert report.target("B").latency.ttft_p95 is not None


def test_constraints_calibration_and_the_scenario_decision(scenario):
    _, _, report = scenario
    b, c = report.target("B"), report.target("C")
    slo_b = next(x for x in b.checks if x.metric == "latency_p95_ms")
    slo_c = next(x for x in c.checks if x.metric == "latency_p95_ms")
    assert slo_b.status == "missed" and slo_c.status == "met"
    assert slo_b.compliance.value < 0.95 < slo_c.compliance.value
    assert b.calibration.status == "poorly calibrated"
    assert c.calibration.status != "poorly calibrated"
    assert c.calibration.raw.ece.value < b.calibration.raw.ece.value
    # The overconfident model's usable threshold sits far above any stated probability.
    assert b.calibration.threshold.threshold > 0.999 > c.calibration.threshold.threshold
    assert (
        c.calibration.recalibrated is not None
        and b.calibration.recalibrated.ece < b.calibration.raw.ece.value
    )
    assert len(c.calibration.risk_coverage) > 10
    d = report.decision
    assert "do not threshold on it raw" in d.sentences["B"]
    assert "misses the p95 latency SLO" in d.sentences["B"]
    assert "meets the p95 latency SLO" in d.sentences["C"]
    assert not d.recommendation.startswith("Deploy B")
    ranked = [r.name for r in d.ranking]
    assert ranked[-1] == "B" and not d.ranking[-1].feasible


def test_expected_cost_follows_the_cost_matrix(scenario):
    data, _, report = scenario
    rows = (
        duckdb.connect()
        .execute(
            "SELECT target, correct, answer, reference, failed, cost_usd FROM "
            f"read_parquet('{data}/comparisons/*/*.parquet') WHERE labelled AND target = 'B'"
        )
        .fetchall()
    )
    by_hand = 0.0
    for _, correct, answer, reference, failed, cost in rows:
        error_cost = 0.0
        if correct == 0.0:
            error_cost = (
                20.0 if (answer, reference) == ("billing", "refund") and not failed else 1.0
            )
        by_hand += cost + error_cost
    assert report.target("B").cost.expected_per_1k.value == pytest.approx(
        1000 * by_hand / len(rows)
    )
    diff = report.target("B").cost.expected_diff_per_1k
    prod = report.target("production").cost.expected_per_1k
    assert diff.value == pytest.approx(report.target("B").cost.expected_per_1k.value - prod.value)


def test_subsets_holm_and_small_n(scenario):
    _, _, report = scenario
    subs = {s.name: s for s in report.target("C").subsets}
    assert {"tag:email", "tag:chat"} <= set(subs)
    assert sum(subs[k].n for k in ("tag:email", "tag:chat")) == 400
    for s in subs.values():
        assert s.too_small == (s.n < 30)
        if s.p_holm is not None:
            assert s.p_holm >= s.paired.p_value - 1e-12


def test_noise_baseline_and_agreement(scenario):
    _, _, report = scenario
    assert report.noise_replica == "twin"
    noise = report.noise_baseline
    assert noise is not None and 0.0 < noise.value < 0.08 and noise.n == 1000
    assert report.target("twin").role == "replica"
    b = report.target("B").agreement
    assert b is not None and b.n == 1000 and b.value < 1 - noise.value
    assert "twin" not in report.decision.recommendation


def test_comparisons_dataset_and_catalog_view(scenario):
    data, _, _ = scenario
    con = catalog.connect(data)
    got = con.execute("SELECT count(*), count(DISTINCT target) FROM comparisons").fetchone()
    con.close()
    assert got == (1600, 4)


def test_weighted_accuracy_uses_inclusion_probabilities(tmp_path):
    lake = LakeBuilder()
    # 20 items from a rare stratum drawn with p=1 (all wrong), 20 from a common one with p=0.1.
    for i in range(40):
        rare = i < 20
        rid = f"r{i}"
        lake.request(rid, tags=["rare" if rare else "common"])
        lake.item(
            "es", rid, stratum="rare" if rare else "common", inclusion_prob=1.0 if rare else 0.1
        )
        lake.label(rid, "reference", "billing")
        lake.response(rid, "production", "refund" if rare else "billing")
    lake.write(tmp_path)
    report = evaluate(tmp_path, {"min_n": 5})
    acc = report.target("production").accuracy
    # Hajek: (20 * 10 * 1 + 20 * 1 * 0) / (20 * 10 + 20 * 1) = 200 / 220
    assert acc.value == pytest.approx(200 / 220)
    assert acc.n == 40


def test_empty_lake_gives_an_empty_but_valid_report(tmp_path):
    report = evaluate(tmp_path, None)
    assert report.targets == [] and report.n_labelled == 0
    assert report.decision.recommendation.startswith("Keep production")
    assert any("no eval set" in n for n in report.notes)


def test_configured_subsets_and_the_too_small_flag(scenario):
    data, _, _ = scenario
    report = evaluate(data, {**SETTINGS, "subsets": ["chat", "absent"], "min_n": 500}, write=False)
    subs = report.target("B").subsets
    assert [s.name for s in subs] == ["tag:chat", "tag:absent"]
    assert all(s.too_small and s.p_holm is None for s in subs)
    assert subs[1].n == 0 and subs[1].paired is None
    assert "only" in report.decision.sentences["B"]  # 400 < min_n: flagged overall too
