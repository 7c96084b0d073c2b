"""The decision on constructed figures: claims only what intervals support, ranks under constraints."""

from __future__ import annotations

import re

import pytest

from analysis.decision import check_clause, decide, fmt_p, rank, sentence, significant
from analysis.limits import status
from analysis.results import (
    CalibrationFigures,
    Check,
    CostFigures,
    Decision,
    EvaluationReport,
    LatencyFigures,
    Recalibration,
    ReliabilityFigures,
    TargetFigures,
)
from analysis.settings import AnalysisSettings, parse_analysis
from analysis.stats.calibration import Calibration
from analysis.stats.estimate import Estimate
from analysis.stats.pairing import PairedComparison
from analysis.stats.thresholds import ThresholdResult


def est(value: float, lo: float, hi: float, n: int = 300) -> Estimate:
    return Estimate(value=value, lo=lo, hi=hi, n=n, method="test")


def paired(diff: float, lo: float, hi: float, p: float, n: int = 300, n_needed: int | None = None):
    return PairedComparison(
        diff=est(diff, lo, hi, n),
        p_value=p,
        b=20,
        c=10,
        n=n,
        se_cluster=None,
        mde=0.045,
        n_needed=n_needed,
    )


def calib(
    ece: float,
    lo: float,
    hi: float,
    status: str,
    threshold: float | None = 0.8,
    coverage: float = 0.7,
    recal_ece: float = 0.02,
) -> CalibrationFigures:
    raw = Calibration(
        ece=est(ece, lo, hi), ece_debiased=ece, mce=ece * 2, brier=0.1, n=300, bins=[]
    )
    th = ThresholdResult(
        target_precision=0.95,
        conf_level=0.95,
        threshold=threshold,
        precision=0.97 if threshold is not None else None,
        precision_lower=0.953 if threshold is not None else None,
        coverage=coverage if threshold is not None else 0.0,
        n_kept=210,
        n=300,
    )
    return CalibrationFigures(
        300, raw, Recalibration("platt", recal_ece, 0.1, None), th, [], status
    )


def target(
    name: str,
    *,
    acc: float = 0.85,
    pc: PairedComparison | None = None,
    checks: list[Check] | None = None,
    cal: CalibrationFigures | None = None,
    role: str = "candidate",
    expected: Estimate | None = None,
    expected_diff: Estimate | None = None,
    per_1k: float = 1.0,
) -> TargetFigures:
    return TargetFigures(
        name=name,
        role=role,
        sources=("live",),
        n_items=300,
        n_labelled=300,
        accuracy=est(acc, acc - 0.04, acc + 0.04),
        paired=pc,
        reliability=ReliabilityFigures(
            1000, 0, est(0.01, 0.005, 0.02, 1000), est(0.0, 0.0, 0.004, 1000)
        ),
        latency=LatencyFigures(1000, None, None, None, 0, None, None, None, [], []),
        cost=CostFigures(est(per_1k, per_1k * 0.9, per_1k * 1.1, 1000), expected, expected_diff),
        calibration=cal,
        agreement=est(0.9, 0.88, 0.92, 1000),
        agreement_sampled=False,
        subsets=[],
        checks=checks or [],
    )


def slo(value: float, lo: float, hi: float, limit: float = 1000.0) -> Check:
    e = est(value, lo, hi, 1000)
    return Check("latency_p95_ms", limit, e, status(e, limit))


def report(targets: list[TargetFigures], noise: Estimate | None = None) -> EvaluationReport:
    return EvaluationReport(
        data_dir="/lake",
        eval_set="es",
        generated_at="2026-03-02T00:00:00+00:00",
        conf_level=0.95,
        n_items=300,
        n_labelled=300,
        targets=targets,
        noise_baseline=noise,
        noise_replica="twin" if noise else None,
        decision=Decision("accuracy", [], {}, ""),
        settings={},
    )


S = parse_analysis({"confidence": "logprobs", "slo": {"latency_p95_ms": 1000}})
PROD = target("production", role="production", checks=[slo(800, 780, 820)])


def numbers_in(text: str) -> list[str]:
    return re.findall(r"-?\d+\.\d", text)


def test_significant_gain_that_meets_the_slo_is_deployed():
    b = target(
        "B",
        acc=0.89,
        pc=paired(0.041, 0.012, 0.070, 0.006),
        checks=[slo(812, 790, 840)],
        cal=calib(0.12, 0.09, 0.15, "poorly calibrated"),
    )
    r = report([PROD, b])
    d = decide(r, S)
    text = d.sentences["B"]
    assert text.startswith("B is 4.1 points more accurate than production [1.2, 7.0], p = 0.006")
    assert "meets the p95 latency SLO (812 ms [790, 840] ≤ 1,000 ms)" in text
    assert "poorly calibrated (ECE 0.12 [0.09, 0.15]): do not threshold on it raw" in text
    assert "Platt recalibration (cross-validated) brings ECE to 0.02" in text
    assert d.recommendation.startswith("Deploy B")
    assert [x.name for x in d.ranking] == ["B", "production"]


@pytest.mark.parametrize(
    ("pc", "why"),
    [
        (paired(0.02, -0.01, 0.05, 0.21, n_needed=900), "interval crosses zero"),
        (paired(0.02, 0.001, 0.04, 0.07, n_needed=700), "test not significant"),
        (paired(0.0, -0.03, 0.03, 1.0), "no difference at all"),
    ],
)
def test_no_significant_difference_never_claims_a_winner(pc, why):
    b = target("B", acc=0.87, pc=pc, checks=[slo(700, 650, 750)])
    d = decide(report([PROD, b]), S)
    text = d.sentences["B"]
    assert "more accurate" not in text and "less accurate" not in text, why
    assert "cannot be told apart from production's" in text
    assert d.recommendation.startswith("Keep production"), why
    assert significant(b, S.alpha) == 0
    if pc.n_needed:
        assert f"about {pc.n_needed - pc.n:,} more labelled items would settle" in text
        assert any("more labelled items" in q for q in d.open_questions)
    else:
        assert "a difference of 4.5 points or more would likely have shown" in text


def test_a_significant_loss_is_reported_as_such():
    b = target("B", acc=0.80, pc=paired(-0.05, -0.08, -0.02, 0.001))
    text = sentence(b, report([PROD, b]), S)
    assert text.startswith("B is 5.0 points less accurate than production [2.0, 8.0], p = 0.001")
    assert decide(report([PROD, b]), S).recommendation.startswith("Keep production")


def test_a_better_candidate_that_misses_the_slo_is_blocked():
    b = target("B", acc=0.92, pc=paired(0.07, 0.04, 0.10, 0.0001), checks=[slo(1450, 1400, 1500)])
    c = target("C", acc=0.84, pc=paired(-0.01, -0.04, 0.02, 0.5), checks=[slo(400, 380, 420)])
    d = decide(report([PROD, b, c]), S)
    assert "misses the p95 latency SLO (1,450 ms [1,400, 1,500] > 1,000 ms)" in d.sentences["B"]
    assert d.recommendation.startswith("Keep production")
    assert "Better but blocked by a constraint: B" in d.recommendation
    ranking = [(x.name, x.feasible) for x in d.ranking]
    assert ranking == [("production", True), ("C", True), ("B", False)]
    assert d.ranking[2].reasons and "misses" in d.ranking[2].reasons[0]


def test_constraint_certainty_words():
    assert check_clause(slo(950, 900, 1010)).startswith("probably meets")
    assert check_clause(slo(1020, 980, 1100)).startswith("probably misses")
    assert check_clause(Check("latency_p95_ms", 1000, None, "no data")).startswith("has no data")
    assert not slo(1020, 980, 1100).feasible and slo(950, 900, 1010).feasible


def test_calibration_sentences():
    good = target(
        "C", pc=paired(0.0, -0.03, 0.03, 0.9), cal=calib(0.02, 0.01, 0.04, "well calibrated")
    )
    text = sentence(good, report([PROD, good]), S)
    assert "well calibrated (ECE 0.02 [0.01, 0.04])" in text
    assert "threshold of 0.80 keeps 70% of requests at ≥ 95% precision (lower bound 95.3%)" in text
    none = target(
        "D",
        pc=paired(0.0, -0.03, 0.03, 0.9),
        cal=calib(0.04, 0.02, 0.07, "uncertain", threshold=None),
    )
    text = sentence(none, report([PROD, none]), S)
    assert "not established yet" in text
    assert "no confidence threshold reaches 95% precision with 95% confidence" in text
    no_conf = parse_analysis({})
    assert "calibrat" not in sentence(none, report([PROD, none]), no_conf)


def test_expected_cost_objective_uses_the_paired_cost_difference():
    s = parse_analysis({"objective": "expected_cost", "cost_matrix": {"default": 10}})
    prod = target("production", role="production", expected=est(40.0, 35.0, 45.0))
    cheap = target(
        "cheap",
        pc=paired(-0.01, -0.04, 0.02, 0.5),
        expected=est(30.0, 26.0, 34.0),
        expected_diff=est(-10.0, -14.0, -6.0),
    )
    close = target(
        "close",
        pc=paired(0.0, -0.03, 0.03, 0.9),
        expected=est(38.0, 33.0, 43.0),
        expected_diff=est(-2.0, -5.0, 1.0),
    )
    d = decide(report([prod, cheap, close]), s)
    assert d.recommendation.startswith("Deploy cheap")
    assert "$10.00 less than production's [6.00, 14.00]" in d.sentences["cheap"]
    assert "not distinguishable from production's" in d.sentences["close"]
    assert [x.name for x in rank([prod, cheap, close], s)] == ["cheap", "close", "production"]


def test_replica_sentence_states_the_noise_floor():
    twin = target("twin", role="replica", pc=paired(0.0, -0.02, 0.02, 1.0))
    r = report([PROD, twin], noise=est(0.031, 0.025, 0.038, 5000))
    text = decide(r, S).sentences["twin"]
    assert "disagrees with production on 3.1% [2.5, 3.8] of requests" in text
    assert decide(r, S).recommendation.startswith("Keep production")  # replicas are never deployed


def test_small_n_is_flagged_and_p_values_read_naturally():
    b = target("B", pc=paired(0.1, -0.1, 0.3, 0.3, n=12))
    assert "only 12 labelled items: too few to say much" in sentence(b, report([PROD, b]), S)
    assert (
        fmt_p(0.0004) == "p < 0.001" and fmt_p(0.0061) == "p = 0.006" and fmt_p(0.41) == "p = 0.41"
    )


def test_sentences_never_print_a_difference_whose_interval_contains_zero():
    """Property over a grid: a claim word appears only when lo and hi share a sign and p < alpha."""
    s: AnalysisSettings = S
    for lo in (-0.06, -0.01, 0.0, 0.01):
        for width in (0.005, 0.02, 0.08):
            for p in (0.001, 0.04, 0.06, 0.5):
                hi = lo + width
                b = target("B", pc=paired((lo + hi) / 2, lo, hi, p))
                text = sentence(b, report([PROD, b]), s)
                claims = "more accurate" in text or "less accurate" in text
                assert claims == ((lo > 0 or hi < 0) and p < s.alpha), (lo, hi, p, text)


def test_an_impractically_small_difference_is_not_promised_a_settlement():
    b = target("B", acc=0.87, pc=paired(0.001, -0.04, 0.04, 0.95, n_needed=3_483_391))
    text = decide(report([PROD, b]), S).sentences["B"]
    assert "would settle" not in text
    assert "would take about 3,483,091 more labels" in text and "would likely have shown" in text
    assert not decide(report([PROD, b]), S).open_questions
