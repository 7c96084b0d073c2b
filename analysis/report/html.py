"""The report as one self-contained HTML page: inline CSS and SVG plots, works offline.

No JavaScript and no external resource: the page opens from a file, an artifact store or an
e-mail attachment. The full JSON report rides along in a non-executed `application/json`
block for anyone who wants the numbers behind the plots.
"""

from __future__ import annotations

import math
from html import escape

from analysis.report import svg
from analysis.report.fmt import (
    AGREEMENT_NOTE,
    COLUMNS,
    SUBSET_COLUMNS,
    overview_rows,
    subset_rows,
)
from analysis.report.json import render_json
from analysis.results import EvaluationReport

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem;line-height:1.45}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}tr.small td{color:#999}
.rec{font-weight:bold;background:#eef7ee;border-left:4px solid #2ca02c;padding:.6rem}
.note{color:#666;font-size:.85rem}.plots{display:flex;flex-wrap:wrap;gap:1rem}
ul.sentences li{margin:.35rem 0}
"""


def _table(
    header: tuple[str, ...] | list[str], rows: list[list[str]], small_col: int | None = None
) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cls = ' class="small"' if small_col is not None and row[small_col] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _plots(report: EvaluationReport) -> list[tuple[str, str]]:
    """(section title, svg) for every plot the data allow."""
    out: list[tuple[str, str]] = []
    slo = report.settings.get("slo") or {}
    series = [(t.name, t.latency.cdf) for t in report.targets if t.latency.cdf]
    if series:
        out.append(
            (
                "latency",
                svg.cdf_chart("Latency CDF", series, "latency (ms)", slo.get("latency_p95_ms")),
            )
        )
    series = [(t.name, t.latency.ttft_cdf) for t in report.targets if t.latency.ttft_cdf]
    if series:
        out.append(
            (
                "latency",
                svg.cdf_chart(
                    "Time to first token CDF", series, "TTFT (ms)", slo.get("ttft_p95_ms")
                ),
            )
        )
    for i, t in enumerate(report.targets):
        c = t.calibration
        if c is not None:
            bins = [(b.mean_conf, b.accuracy, b.n) for b in c.raw.bins]
            out.append(
                (
                    "calibration",
                    svg.reliability_diagram(t.name, bins, c.raw.ece.value, svg.color(i)),
                )
            )
    series = [(t.name, t.calibration.risk_coverage) for t in report.targets if t.calibration]
    if series:
        target_risk = 1.0 - float(report.settings.get("target_precision", 0.95))
        out.append(("calibration", svg.risk_coverage_chart(series, target_risk)))
    rows = []
    for t in report.targets:
        cost = t.cost.per_1k
        if cost is not None and t.accuracy is not None:
            a = t.accuracy
            rows.append(
                (t.name, cost.value, cost.lo, cost.hi, 100 * a.value, 100 * a.lo, 100 * a.hi)
            )
    if rows:
        out.append(("cost", svg.accuracy_cost_chart(rows)))
    for t in report.targets:
        forest = [
            (
                s.name,
                100 * s.paired.diff.value,
                100 * s.paired.diff.lo,
                100 * s.paired.diff.hi,
                s.too_small,
            )
            for s in t.subsets
            if s.paired is not None and math.isfinite(s.paired.diff.value)
        ]
        if t.paired is not None:
            d = t.paired.diff
            forest.insert(0, ("overall", 100 * d.value, 100 * d.lo, 100 * d.hi, False))
        if forest and t.role != "production":
            out.append(("subsets", svg.forest_plot(f"{t.name} − production, by subset", forest)))
    return out


def render_html(report: EvaluationReport) -> str:
    """The whole page as text."""
    d = report.decision
    es = escape(report.eval_set or "all labelled requests")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>shadoweval report: {es}</title><style>{CSS}</style></head><body>",
        "<h1>shadoweval report</h1>",
        f'<p class="note">Eval set <b>{es}</b>: {report.n_labelled} labelled of {report.n_items} items; '
        f"{100 * report.conf_level:.0f}% intervals; generated {escape(report.generated_at)}.</p>",
        f'<p class="rec" id="recommendation">{escape(d.recommendation)}</p>',
        '<ul class="sentences">',
        *[f"<li><b>{escape(n)}</b>: {escape(s)}</li>" for n, s in d.sentences.items()],
        "</ul>",
    ]
    if d.open_questions:
        parts += [
            "<h2>Open questions</h2><ul>",
            *[f"<li>{escape(q)}</li>" for q in d.open_questions],
            "</ul>",
        ]
    parts += [
        "<h2>Targets</h2>",
        _table(COLUMNS, overview_rows(report)),
        f'<p class="note">{escape(AGREEMENT_NOTE)}</p>',
    ]
    if report.noise_baseline is not None:
        n = report.noise_baseline
        parts.append(
            f"<p>Noise baseline: production disagrees with its replica <b>{escape(report.noise_replica or '')}</b> "
            f"on {100 * n.value:.1f}% [{100 * n.lo:.1f}, {100 * n.hi:.1f}] of {n.n:,} requests.</p>"
        )
    titles = {
        "latency": "Latency",
        "calibration": "Calibration and thresholds",
        "cost": "Accuracy and cost",
        "subsets": "Subsets",
    }
    plots = _plots(report)
    for section, title in titles.items():
        figs = [s for sec, s in plots if sec == section]
        if figs:
            parts += [f'<h2 id="{section}">{title}</h2>', '<div class="plots">', *figs, "</div>"]
    subsets = subset_rows(report)
    if subsets:
        parts += [
            "<p>p-values are Holm-adjusted across each target's subsets; grey rows have too few items.</p>"
        ]
        parts.append(_table(SUBSET_COLUMNS, subsets, small_col=len(SUBSET_COLUMNS) - 1))
    ranking = [
        [str(r.rank), r.name, "yes" if r.feasible else "no", "; ".join(r.reasons)]
        for r in d.ranking
    ]
    parts += [
        f"<h2>Ranking by {escape(d.objective)}</h2>",
        _table(("rank", "target", "feasible", "why not"), ranking),
    ]
    parts += [f'<p class="note">{escape(n)}</p>' for n in report.notes]
    data = render_json(report).replace("</", "<\\/")
    parts += [f'<script type="application/json" id="report-data">{data}</script>', "</body></html>"]
    return "\n".join(parts) + "\n"
