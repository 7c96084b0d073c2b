"""Numbers as the reports print them, and the rows every text format shares.

Each cell shows the estimate and its interval, so no format shows a bare point estimate.
"""

from __future__ import annotations

from analysis.decision import fmt_threshold
from analysis.results import EvaluationReport, TargetFigures
from analysis.stats.estimate import Estimate

DASH = "–"


def pct(e: Estimate | None, digits: int = 1) -> str:
    """'85.2% [81.0, 88.9]' for a proportion."""
    if e is None:
        return DASH
    return f"{100 * e.value:.{digits}f}% [{100 * e.lo:.{digits}f}, {100 * e.hi:.{digits}f}]"


def points(e: Estimate | None) -> str:
    """'+4.1 [+1.2, +7.0]' for a difference of proportions, in percentage points."""
    if e is None:
        return DASH
    return f"{100 * e.value:+.1f} [{100 * e.lo:+.1f}, {100 * e.hi:+.1f}]"


def ms(e: Estimate | None) -> str:
    if e is None:
        return DASH
    return f"{e.value:,.0f} [{e.lo:,.0f}, {e.hi:,.0f}]"


def usd(e: Estimate | None) -> str:
    if e is None:
        return DASH
    return f"${e.value:,.2f} [{e.lo:,.2f}, {e.hi:,.2f}]"


def p_value(p: float | None) -> str:
    if p is None:
        return DASH
    return "<0.001" if p < 0.001 else (f"{p:.3f}" if p < 0.1 else f"{p:.2f}")


def _delta(t: TargetFigures) -> str:
    if t.paired is None:
        return DASH
    return f"{points(t.paired.diff)} p={p_value(t.paired.p_value)}"


def _calibration(t: TargetFigures) -> str:
    c = t.calibration
    if c is None:
        return DASH
    text = f"{c.raw.ece.value:.3f}"
    if c.recalibrated is not None:
        text += f" → {c.recalibrated.ece:.3f}"
    return text


def _threshold(t: TargetFigures) -> str:
    c = t.calibration
    if c is None:
        return DASH
    th = c.threshold
    if th.threshold is None:
        return "none"
    return f"≥{fmt_threshold(th.threshold)}: keeps {100 * th.coverage:.0f}%"


def _checks(t: TargetFigures) -> str:
    if not t.checks:
        return DASH
    marks = {
        "met": "✓",
        "probably met": "✓?",
        "probably missed": "✗?",
        "missed": "✗",
        "no data": "?",
    }
    return " ".join(f"{c.metric.split('_')[0]}{marks[c.status]}" for c in t.checks)


COLUMNS = (
    "target",
    "accuracy",
    "Δ vs production (points)",
    "p95 latency ms",
    "p95 TTFT ms",
    "error rate",
    "$ / 1k",
    "expected $ / 1k",
    "ECE (→ recal.)",
    "threshold",
    "agreement*",
    "constraints",
)


def overview_rows(report: EvaluationReport) -> list[list[str]]:
    """One row per target, in the order of COLUMNS."""
    rows = []
    for t in report.targets:
        name = t.name if t.role != "replica" else f"{t.name} (replica)"
        acc = pct(t.accuracy)
        if t.accuracy is not None:
            acc += f" n={t.accuracy.n}"
        rows.append(
            [
                name,
                acc,
                _delta(t),
                ms(t.latency.p95),
                ms(t.latency.ttft_p95),
                pct(t.reliability.error_rate),
                usd(t.cost.per_1k),
                usd(t.cost.expected_per_1k),
                _calibration(t),
                _threshold(t),
                pct(t.agreement) if t.role != "production" else DASH,
                _checks(t),
            ]
        )
    return rows


SUBSET_COLUMNS = (
    "target",
    "subset",
    "n",
    "accuracy",
    "production",
    "Δ (points)",
    "p (Holm)",
    "note",
)


def subset_rows(report: EvaluationReport) -> list[list[str]]:
    """One row per (candidate, subset)."""
    rows = []
    for t in report.targets:
        if t.role == "production":
            continue
        for sub in t.subsets:
            diff = points(sub.paired.diff) if sub.paired is not None else DASH
            note = f"n too small (< {report.settings.get('min_n', 30)})" if sub.too_small else ""
            rows.append(
                [
                    t.name,
                    sub.name,
                    str(sub.n),
                    pct(sub.accuracy),
                    pct(sub.production_accuracy),
                    diff,
                    p_value(sub.p_holm),
                    note,
                ]
            )
    return rows


AGREEMENT_NOTE = (
    "* agreement: how often the target gave production's answer on all mirrored traffic, "
    "labelled or not. It is agreement, not accuracy."
)
