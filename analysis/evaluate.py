"""`evaluate()`: from the lake and the settings to an `EvaluationReport` with every number.

The Python API for notebooks:

    from analysis.evaluate import evaluate
    report = evaluate("./shadoweval-data", settings)       # proxy Settings, AnalysisSettings or None
    report.target("small").paired.diff                      # an Estimate with lo/hi
    report.decision.sentences["small"]

Accuracy, paired comparisons, subsets, calibration and expected cost use the labelled eval
set (weighted by inclusion probabilities); latency, failures, spend and agreement use every
recorded call, labelled or not.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from analysis import settings as analysis_settings
from analysis.comparisons import (
    ComparisonTable,
    build_comparisons,
    open_lake,
    register_comparisons_view,
    resolve_eval_set,
    write_comparisons,
)
from analysis.decision import decide
from analysis.limits import checks, latency_figures
from analysis.results import (
    PRODUCTION,
    CalibrationFigures,
    CostFigures,
    Decision,
    EvaluationReport,
    Recalibration,
    ReliabilityFigures,
    SubsetFigures,
    TargetFigures,
)
from analysis.settings import AnalysisSettings
from analysis.stats.calibration import calibration
from analysis.stats.cost import expected_cost, per_thousand
from analysis.stats.estimate import Estimate
from analysis.stats.multiple import holm
from analysis.stats.pairing import PairedComparison, paired_compare
from analysis.stats.proportions import accuracy, wilson_interval
from analysis.stats.recalibration import recalibrate_cv
from analysis.stats.thresholds import risk_coverage, threshold_for_precision
from analysis.traffic import TrafficFigures, agreement_with_production, traffic_figures
from proxy.config import Settings

MIN_CALIBRATION_N = 20  # below this, calibration figures say nothing useful
CURVE_POINTS = 120  # points kept per plotted curve


def _analysis(settings: Settings | AnalysisSettings | dict[str, Any] | None) -> AnalysisSettings:
    if isinstance(settings, AnalysisSettings):
        return settings
    if isinstance(settings, Settings):
        return analysis_settings.from_settings(settings)
    return analysis_settings.parse_analysis(settings)


def _estimate(value: float, lo: float, hi: float, n: int, method: str) -> Estimate:
    return Estimate(value=value, lo=lo, hi=hi, n=n, method=method)


def _proportion(k: int, n: int, conf: float) -> Estimate | None:
    if n <= 0:
        return None
    lo, hi = wilson_interval(k, n, conf)
    return _estimate(k / n, lo, hi, n, "wilson")


def _accuracy(correct: np.ndarray, incl: np.ndarray, conf: float) -> Estimate | None:
    if len(correct) == 0:
        return None
    weighted = bool(np.any(incl != 1.0))
    return accuracy(correct, incl if weighted else None, conf)


def _curve(xs: np.ndarray, ys: np.ndarray) -> list[tuple[float, float]]:
    if len(xs) == 0:
        return []
    idx = np.unique(np.linspace(0, len(xs) - 1, min(CURVE_POINTS, len(xs))).round().astype(int))
    return [(float(xs[i]), float(ys[i])) for i in idx]


def _shared(cand: ComparisonTable, prod: ComparisonTable) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the labelled items both tables have, aligned by request."""
    c_ok = np.flatnonzero(~np.isnan(cand.correct))
    p_ok = np.flatnonzero(~np.isnan(prod.correct))
    _, ci, pi = np.intersect1d(
        cand.request_id[c_ok].astype(str), prod.request_id[p_ok].astype(str), return_indices=True
    )
    return c_ok[ci], p_ok[pi]


def _paired(
    cand: ComparisonTable, prod: ComparisonTable, s: AnalysisSettings
) -> tuple[PairedComparison | None, np.ndarray, np.ndarray]:
    """The paired comparison on labelled items both answered, and the row indices used."""
    ci, pi = _shared(cand, prod)
    if len(ci) < 2:
        return None, ci, pi
    weights = cand.weight[ci] if np.any(cand.weight[ci] != 1.0) else None
    clusters = cand.session_id[ci].astype(str)
    result = paired_compare(
        cand.correct[ci],
        prod.correct[pi],
        weights=weights,
        clusters=clusters if len(np.unique(clusters)) < len(clusters) else None,
        conf=s.conf_level,
        n_boot=s.n_boot,
        seed=s.seed,
    )
    return result, ci, pi


def _subset_masks(table: ComparisonTable, s: AnalysisSettings) -> list[tuple[str, str, np.ndarray]]:
    """(dimension, value, row mask) for each subset to report, without duplicates."""
    out: list[tuple[str, str, np.ndarray]] = []
    seen: set[frozenset[str]] = set()
    tag_values = sorted({t for tags in table.tags for t in tags})
    if s.subsets is not None:
        tag_values = [t for t in s.subsets]
    candidates: list[tuple[str, str, np.ndarray]] = [
        ("tag", v, np.array([v in tags for tags in table.tags], dtype=bool)) for v in tag_values
    ]
    if s.subsets is None:
        for dim, col in (("route", table.route), ("stratum", table.stratum)):
            values = sorted({str(v) for v in col if v is not None})
            if len(values) > 1:
                candidates += [(dim, v, col.astype(str) == v) for v in values]
    for dim, value, mask in candidates:
        key = frozenset(table.request_id[mask].astype(str).tolist())
        if key in seen and dim != "tag":
            continue
        seen.add(key)
        out.append((dim, value, mask))
    return out


def _subsets(
    table: ComparisonTable,
    name: str,
    s: AnalysisSettings,
    masks: list[tuple[str, str, np.ndarray]],
) -> list[SubsetFigures]:
    rows: list[SubsetFigures] = []
    pvals: list[tuple[int, float]] = []
    for dim, value, mask in masks:
        sub = table.select(mask)
        tgt = sub.select(sub.target == name)
        prod = sub.select(sub.target == PRODUCTION)
        lab = ~np.isnan(tgt.correct)
        acc = _accuracy(tgt.correct[lab], tgt.inclusion_prob[lab], s.conf_level)
        paired = None
        n = int(lab.sum())
        prod_acc = None
        if name != PRODUCTION:
            paired, ci, pi = _paired(tgt, prod, s)
            n = len(ci)
            prod_acc = _accuracy(prod.correct[pi], prod.inclusion_prob[pi], s.conf_level)
            acc = _accuracy(tgt.correct[ci], tgt.inclusion_prob[ci], s.conf_level) if n else acc
        too_small = n < s.min_n
        if paired is not None and not too_small:
            pvals.append((len(rows), paired.p_value))
        rows.append(SubsetFigures(dim, value, n, acc, prod_acc, paired, None, too_small))
    if pvals:
        adjusted = holm([p for _, p in pvals])
        for (i, _), p in zip(pvals, adjusted, strict=True):
            rows[i] = replace(rows[i], p_holm=float(p))
    return rows


def _calibration(t: ComparisonTable, s: AnalysisSettings) -> CalibrationFigures | None:
    ok = ~np.isnan(t.correct) & np.isfinite(t.confidence)
    conf, correct = np.clip(t.confidence[ok], 0.0, 1.0), t.correct[ok]
    if len(conf) < MIN_CALIBRATION_N:
        return None
    raw = calibration(
        conf,
        correct,
        n_bins=s.calibration_bins,
        conf_level=s.conf_level,
        n_boot=min(s.n_boot, 1000),
        seed=s.seed,
    )
    threshold = threshold_for_precision(conf, correct, s.target_precision, s.conf_level)
    recal = None
    if 0 < correct.sum() < len(correct):
        r = recalibrate_cv(conf, correct, method=s.recalibration, seed=s.seed)
        recal = Recalibration(
            r.method,
            float(r.ece),
            float(r.brier),
            threshold_for_precision(r.conf, correct, s.target_precision, s.conf_level),
        )
    coverage, risk = risk_coverage(conf, correct)
    rejected = float(getattr(raw, "p_calibrated", float("nan"))) < s.alpha
    if raw.ece.lo > s.ece_tolerance or (rejected and raw.ece.value > s.ece_tolerance):
        status = "poorly calibrated"
    elif raw.ece_debiased <= s.ece_tolerance:
        status = "well calibrated"
    else:
        status = "uncertain"
    return CalibrationFigures(len(conf), raw, recal, threshold, _curve(coverage, risk), status)


def _error_costs(t: ComparisonTable, s: AnalysisSettings) -> np.ndarray:
    matrix = s.cost_matrix
    assert matrix is not None
    out = np.zeros(len(t))
    for i in np.flatnonzero(t.correct == 0.0):
        out[i] = matrix.cost(t.answer[i], t.reference[i], bool(t.failed[i]))
    return out


def _costs(
    t: ComparisonTable, prod: ComparisonTable, traffic: TrafficFigures | None, s: AnalysisSettings
) -> CostFigures:
    per_1k = None
    if traffic is not None and len(traffic.cost_usd):
        per_1k = per_thousand(traffic.cost_usd, conf=s.conf_level, n_boot=s.n_boot, seed=s.seed)
    if s.cost_matrix is None:
        return CostFigures(per_1k, None, None)
    lab = ~np.isnan(t.correct)
    call = np.nan_to_num(t.cost_usd)
    err = _error_costs(t, s)
    expected = None
    if lab.any():
        w = t.weight[lab] if np.any(t.weight[lab] != 1.0) else None
        expected = expected_cost(
            call[lab], err[lab], weights=w, conf=s.conf_level, n_boot=s.n_boot, seed=s.seed
        )
    diff = None
    if t.target.size and t.target[0] != PRODUCTION:
        ci, pi = _shared(t, prod)
        if len(ci):
            p_call, p_err = np.nan_to_num(prod.cost_usd), _error_costs(prod, s)
            w = t.weight[ci] if np.any(t.weight[ci] != 1.0) else None
            diff = expected_cost(
                call[ci] - p_call[pi],
                err[ci] - p_err[pi],
                weights=w,
                conf=s.conf_level,
                n_boot=s.n_boot,
                seed=s.seed,
            )
    return CostFigures(per_1k, expected, diff)


def _target(
    name: str,
    table: ComparisonTable,
    traffic: TrafficFigures | None,
    agreement: Estimate | None,
    sampled: bool,
    s: AnalysisSettings,
    masks: list[tuple[str, str, np.ndarray]],
) -> TargetFigures:
    t = table.select(table.target == name)
    prod = table.select(table.target == PRODUCTION)
    lab = ~np.isnan(t.correct)
    role = PRODUCTION if name == PRODUCTION else ("replica" if name in s.replicas else "candidate")
    paired = _paired(t, prod, s)[0] if name != PRODUCTION else None
    reliability = ReliabilityFigures(
        calls=traffic.calls if traffic else 0,
        unobserved=traffic.unobserved if traffic else 0,
        error_rate=_proportion(traffic.errors, traffic.calls, s.conf_level) if traffic else None,
        timeout_rate=_proportion(traffic.timeouts, traffic.calls, s.conf_level)
        if traffic
        else None,
    )
    latency = latency_figures(traffic, s)
    cost = _costs(t, prod, traffic, s)
    return TargetFigures(
        name=name,
        role=role,
        sources=traffic.sources if traffic else tuple(sorted(set(t.source.tolist()))),
        n_items=int(t.observed.sum()),
        n_labelled=int(lab.sum()),
        accuracy=_accuracy(t.correct[lab], t.inclusion_prob[lab], s.conf_level),
        paired=paired,
        reliability=reliability,
        latency=latency,
        cost=cost,
        calibration=_calibration(t, s) if s.confidence.method != "none" else None,
        agreement=agreement,
        agreement_sampled=sampled,
        subsets=_subsets(table, name, s, masks),
        checks=checks(s, latency, reliability, cost, traffic),
    )


def evaluate_table(
    con: duckdb.DuckDBPyConnection,
    table: ComparisonTable,
    settings: AnalysisSettings,
    *,
    data_dir: str = "",
) -> EvaluationReport:
    """Every figure and the decision for an already built comparisons table."""
    s = settings
    traffic = traffic_figures(con)
    names = sorted(set(table.targets()) | set(traffic), key=lambda n: (n != PRODUCTION, n))
    agreements = agreement_with_production(con, s, names)
    masks = _subset_masks(table, s)
    targets = []
    for name in names:
        a = agreements.get(name)
        est = _proportion(a.agree, a.n, s.conf_level) if a else None
        sampled = bool(a and a.sampled)
        targets.append(_target(name, table, traffic.get(name), est, sampled, s, masks))
    replica = next((t for t in names if t in s.replicas), None)
    noise = None
    if replica is not None and agreements.get(replica) and agreements[replica].n:
        a = agreements[replica]
        noise = _proportion(a.n - a.agree, a.n, s.conf_level)
    notes = []
    if table.eval_set is None:
        notes.append("no eval set: every labelled request is used, unweighted")
    if PRODUCTION not in names:
        notes.append("no production responses: paired comparisons are impossible")
    labelled_ids = set(table.request_id[~np.isnan(table.correct)].astype(str).tolist())
    report = EvaluationReport(
        data_dir=data_dir,
        eval_set=table.eval_set,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        conf_level=s.conf_level,
        n_items=len(set(table.request_id.astype(str).tolist())),
        n_labelled=len(labelled_ids),
        targets=targets,
        noise_baseline=noise,
        noise_replica=replica,
        decision=Decision(s.objective, [], {}, ""),
        settings=s.model_dump(mode="json", exclude={"scorers": {"__all__": {"api_key"}}}),
        notes=notes,
    )
    return replace(report, decision=decide(report, s))


def evaluate(
    data_dir: str | Path,
    settings: Settings | AnalysisSettings | dict[str, Any] | None = None,
    eval_set: str | None = None,
    *,
    write: bool = True,
) -> EvaluationReport:
    """Evaluate an eval set (default: the newest) and decide; also writes `comparisons`.

    Each (request, target) counts once: its latest observed call.
    """
    s = _analysis(settings)
    con = open_lake(data_dir)
    name = resolve_eval_set(con, eval_set)
    table = build_comparisons(con, s, name)
    if write and len(table):
        write_comparisons(data_dir, table)
        register_comparisons_view(data_dir)
    return evaluate_table(con, table, s, data_dir=str(data_dir))
