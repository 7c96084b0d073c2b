"""From figures to a decision: a ranking under the constraints and a plain sentence per target.

The rules that keep it honest: a difference is claimed only when its interval excludes zero
and the test agrees (p below 1 - conf_level); otherwise the sentence says the targets cannot
be told apart, gives the interval, and says how many more labels would settle it. A
constraint is "met" only when its whole interval is within the limit; "probably" says the
point estimate is within but the interval is not. Calibration is "poor" only when the lower
bound of ECE exceeds the tolerance, or when the data reject perfect calibration and the
estimate exceeds it.
"""

from __future__ import annotations

from analysis.results import (
    PRODUCTION,
    Check,
    Decision,
    EvaluationReport,
    Ranked,
    TargetFigures,
)
from analysis.settings import AnalysisSettings
from analysis.stats.estimate import Estimate

_METRIC_NAMES = {
    "latency_p95_ms": "p95 latency SLO",
    "ttft_p95_ms": "p95 TTFT SLO",
    "error_rate": "error-rate limit",
    "cost_per_1k_usd": "cost limit",
}


def fmt_p(p: float) -> str:
    """A p-value as people read them: 'p < 0.001', 'p = 0.006', 'p = 0.41'."""
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def fmt_threshold(t: float) -> str:
    """A confidence threshold with enough digits to tell 0.9996 from 1."""
    return f"{t:.2f}" if t < 0.99 else f"{t:.6f}".rstrip("0")


def _value(metric: str, x: float) -> str:
    if metric.endswith("_ms"):
        return f"{x:,.0f} ms"
    if metric == "error_rate":
        return f"{100 * x:.1f}%"
    return f"${x:,.2f}"


def _interval(metric: str, e: Estimate) -> str:
    if metric.endswith("_ms"):
        return f"[{e.lo:,.0f}, {e.hi:,.0f}]"
    if metric == "error_rate":
        return f"[{100 * e.lo:.1f}, {100 * e.hi:.1f}]"
    return f"[{e.lo:,.2f}, {e.hi:,.2f}]"


def check_clause(c: Check) -> str:
    """'meets the p95 latency SLO (812 ms [790, 840] ≤ 1,000 ms)' and its siblings."""
    what = _METRIC_NAMES.get(c.metric, c.metric)
    if c.estimate is None or c.status == "no data":
        return f"has no data for the {what}"
    e = c.estimate
    shown = f"{_value(c.metric, e.value)} {_interval(c.metric, e)}"
    limit = _value(c.metric, c.limit)
    return {
        "met": f"meets the {what} ({shown} ≤ {limit})",
        "probably met": f"probably meets the {what} ({shown}; the interval reaches past {limit})",
        "probably missed": f"probably misses the {what} ({shown} > {limit}, not certain)",
        "missed": f"misses the {what} ({shown} > {limit})",
    }[c.status]


def significant(t: TargetFigures, alpha: float) -> int:
    """+1 / -1 when the data support a higher / lower accuracy than production's, else 0."""
    pc = t.paired
    if pc is None or pc.p_value >= alpha:
        return 0
    if pc.diff.lo > 0:
        return 1
    if pc.diff.hi < 0:
        return -1
    return 0


def _more_labels(t: TargetFigures) -> int | None:
    pc = t.paired
    if pc is None or pc.n_needed is None:
        return None
    return max(int(pc.n_needed) - pc.n, 0) or None


def _practical(t: TargetFigures, more: int | None) -> bool:
    """Whether labelling `more` items is a realistic next step (at most ~10x what exists)."""
    return more is not None and t.paired is not None and more <= 10 * max(t.paired.n, 100)


def accuracy_clause(t: TargetFigures, s: AnalysisSettings) -> str:
    """What the labelled items say about accuracy against production."""
    pc = t.paired
    if pc is None:
        if t.accuracy is None:
            return f"{t.name} has no labelled items yet"
        a = t.accuracy
        return (
            f"{t.name} has no labelled items in common with production "
            f"(accuracy {100 * a.value:.1f}% [{100 * a.lo:.1f}, {100 * a.hi:.1f}], n = {a.n})"
        )
    d, lo, hi = 100 * pc.diff.value, 100 * pc.diff.lo, 100 * pc.diff.hi
    sign = significant(t, s.alpha)
    if sign > 0:
        text = f"{t.name} is {d:.1f} points more accurate than production [{lo:.1f}, {hi:.1f}], {fmt_p(pc.p_value)}"
    elif sign < 0:
        text = f"{t.name} is {-d:.1f} points less accurate than production [{-hi:.1f}, {-lo:.1f}], {fmt_p(pc.p_value)}"
    else:
        text = (
            f"{t.name}'s accuracy cannot be told apart from production's: {d:+.1f} points "
            f"[{lo:+.1f}, {hi:+.1f}], {fmt_p(pc.p_value)}, n = {pc.n}"
        )
        more = _more_labels(t)
        if _practical(t, more) and abs(d) >= 0.05:
            text += (
                f"; about {more:,} more labelled items would settle a {abs(d):.1f}-point difference"
            )
        elif more is not None and abs(d) >= 0.05:
            # A tiny observed difference: say what these labels can rule out instead of
            # promising that an impractical number of labels would settle it.
            text += (
                f"; a difference of {100 * pc.mde:.1f} points or more would likely have shown, "
                f"while settling one as small as {abs(d):.1f} points would take "
                f"about {more:,} more labels"
            )
        else:
            text += f"; a difference of {100 * pc.mde:.1f} points or more would likely have shown"
    if pc.n < s.min_n:
        text += f" (only {pc.n} labelled items: too few to say much)"
    return text


def calibration_clause(t: TargetFigures, s: AnalysisSettings) -> str | None:
    """Whether its confidence can be thresholded, and at what cost in coverage."""
    if s.confidence.method == "none":
        return None
    cal = t.calibration
    if cal is None:
        return "too few labelled items carry a confidence to judge its calibration"
    e = cal.raw.ece
    ece = f"ECE {e.value:.2f} [{e.lo:.2f}, {e.hi:.2f}]"
    th = cal.threshold
    target = f"{100 * s.target_precision:.0f}%"
    if th.threshold is not None:
        keep = (
            f"a confidence threshold of {fmt_threshold(th.threshold)} keeps {100 * th.coverage:.0f}% of "
            f"requests at ≥ {target} precision (lower bound {100 * (th.precision_lower or 0):.1f}%)"
        )
    else:
        keep = f"no confidence threshold reaches {target} precision with {100 * s.conf_level:.0f}% confidence"
    if cal.status == "poorly calibrated":
        text = f"its confidence is poorly calibrated ({ece}): do not threshold on it raw"
        r = cal.recalibrated
        if r is not None and r.ece <= s.ece_tolerance:
            text += f"; {r.method.replace('platt', 'Platt')} recalibration (cross-validated) brings ECE to {r.ece:.2f}"
        if th.threshold is not None:
            fitted = keep.removeprefix("a confidence threshold of ")
            text += f"; a threshold fitted on these labels still works: {fitted}"
        return text
    if cal.status == "well calibrated":
        return f"its confidence is well calibrated ({ece}): {keep}"
    return f"its calibration is not established yet ({ece}); {keep}"


def cost_clause(t: TargetFigures, prod: TargetFigures | None, s: AnalysisSettings) -> str | None:
    """Spend, and with a cost matrix the expected cost of its mistakes against production."""
    c = t.cost
    if c.expected_per_1k is not None:
        e = c.expected_per_1k
        text = (
            f"its expected cost including errors is ${e.value:,.2f} per 1,000 requests "
            f"[{e.lo:,.2f}, {e.hi:,.2f}]"
        )
        d = c.expected_diff_per_1k
        if d is not None:
            if d.hi < 0:
                text += f", ${-d.value:,.2f} less than production's [{-d.hi:,.2f}, {-d.lo:,.2f}]"
            elif d.lo > 0:
                text += f", ${d.value:,.2f} more than production's [{d.lo:,.2f}, {d.hi:,.2f}]"
            else:
                text += (
                    f", not distinguishable from production's (difference {d.value:+,.2f} USD "
                    f"[{d.lo:+,.2f}, {d.hi:+,.2f}])"
                )
        return text
    if c.per_1k is not None:
        text = f"it costs ${c.per_1k.value:,.2f} per 1,000 requests"
        if prod is not None and prod is not t and prod.cost.per_1k is not None:
            text += f" (production: ${prod.cost.per_1k.value:,.2f})"
        return text
    return None


def sentence(t: TargetFigures, report: EvaluationReport, s: AnalysisSettings) -> str:
    """One plain sentence: what the data support about this target, and how sure."""
    prod = next((x for x in report.targets if x.name == PRODUCTION), None)
    if t.name == PRODUCTION:
        a = t.accuracy
        head = (
            f"production is {100 * a.value:.1f}% accurate [{100 * a.lo:.1f}, {100 * a.hi:.1f}] "
            f"on {a.n} labelled items"
            if a is not None
            else "production has no labelled items yet"
        )
    else:
        head = accuracy_clause(t, s)
    checks = [check_clause(c) for c in t.checks]
    if checks:
        head += ", and " + ", ".join(checks) if len(checks) == 1 else "; it " + ", ".join(checks)
    parts = [head]
    if t.role == "replica" and report.noise_baseline is not None:
        n = report.noise_baseline
        parts.append(
            f"as a replica of production it disagrees with production on {100 * n.value:.1f}% "
            f"[{100 * n.lo:.1f}, {100 * n.hi:.1f}] of requests: the noise floor for reading "
            "other differences"
        )
    for extra in (calibration_clause(t, s), cost_clause(t, prod, s)):
        if extra:
            parts.append(extra)
    return "; ".join(parts) + "."


def objective(t: TargetFigures, s: AnalysisSettings) -> Estimate | None:
    """The objective's estimate: accuracy (higher is better) or expected cost (lower)."""
    return t.accuracy if s.objective == "accuracy" else t.cost.expected_per_1k


def beats_production(t: TargetFigures, s: AnalysisSettings) -> bool:
    """Whether the data support that this target is better than production on the objective."""
    if s.objective == "accuracy":
        return significant(t, s.alpha) > 0
    d = t.cost.expected_diff_per_1k
    return d is not None and d.hi < 0


def rank(targets: list[TargetFigures], s: AnalysisSettings) -> list[Ranked]:
    """Feasible targets first, then by the objective's point estimate; replicas are not ranked."""

    def key(t: TargetFigures) -> tuple[bool, bool, float, str]:
        o = objective(t, s)
        value = float("inf") if o is None else (-o.value if s.objective == "accuracy" else o.value)
        return (not t.feasible, o is None, value, t.name)

    out = []
    ranked = sorted((t for t in targets if t.role != "replica"), key=key)
    for i, t in enumerate(ranked, start=1):
        reasons = [check_clause(c) for c in t.checks if not c.feasible]
        out.append(Ranked(i, t.name, t.feasible, objective(t, s), reasons))
    return out


def _recommend(report: EvaluationReport, s: AnalysisSettings) -> tuple[str, list[str]]:
    cands = [t for t in report.targets if t.role == "candidate"]
    open_q: list[str] = []
    for t in cands:
        more = _more_labels(t)
        if t.paired is not None and significant(t, s.alpha) == 0 and _practical(t, more):
            open_q.append(
                f"Is {t.name} more or less accurate than production? About {more:,} more "
                f"labelled items would settle a {abs(100 * t.paired.diff.value):.1f}-point difference."
            )
        for c in t.checks:
            if c.status in ("probably met", "probably missed"):
                open_q.append(
                    f"Whether {t.name} meets the {_METRIC_NAMES[c.metric]}: more traffic would settle it."
                )
    winners = [t for t in cands if t.feasible and beats_production(t, s)]
    what = "accuracy" if s.objective == "accuracy" else "expected cost"
    if winners:
        order = [r.name for r in rank(winners, s)]
        best = next(t for t in winners if t.name == order[0])
        text = f"Deploy {best.name}: the data support that it beats production on {what} and it meets every constraint."
        return text, open_q
    blocked = [t.name for t in cands if beats_production(t, s) and not t.feasible]
    text = f"Keep production: no candidate is shown to beat it on {what} while meeting every constraint."
    if blocked:
        text += f" Better but blocked by a constraint: {', '.join(blocked)}."
    return text, open_q


def decide(report: EvaluationReport, s: AnalysisSettings) -> Decision:
    """The ranking, the sentences and the recommendation for a report's figures."""
    sentences = {t.name: sentence(t, report, s) for t in report.targets}
    recommendation, open_q = _recommend(report, s)
    return Decision(s.objective, rank(report.targets, s), sentences, recommendation, open_q)
