"""The report for a terminal: rich tables of every target and subset, then the decision."""

from __future__ import annotations

import io

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from analysis.report.fmt import (
    AGREEMENT_NOTE,
    COLUMNS,
    SUBSET_COLUMNS,
    overview_rows,
    subset_rows,
)
from analysis.results import EvaluationReport


def _title(report: EvaluationReport) -> str:
    es = report.eval_set or "all labelled requests"
    return (
        f"shadoweval report · eval set {es} · {report.n_labelled} labelled of {report.n_items} "
        f"items · {100 * report.conf_level:.0f}% intervals"
    )


def renderables(report: EvaluationReport) -> list[RenderableType]:
    """The tables and sentences, ready for a rich Console."""
    overview = Table(title=_title(report), title_justify="left", show_lines=False)
    for i, col in enumerate(COLUMNS):
        overview.add_column(col, no_wrap=i == 0, overflow="fold")
    for row in overview_rows(report):
        overview.add_row(*row)
    out: list[RenderableType] = [overview, Text(AGREEMENT_NOTE, style="dim")]
    if report.noise_baseline is not None:
        n = report.noise_baseline
        out.append(
            Text(
                f"Noise baseline: production disagrees with its replica {report.noise_replica} on "
                f"{100 * n.value:.1f}% [{100 * n.lo:.1f}, {100 * n.hi:.1f}] of {n.n:,} requests."
            )
        )
    subsets = subset_rows(report)
    if subsets:
        table = Table(
            title="Per subset (Holm-adjusted across each target's subsets)", title_justify="left"
        )
        for col in SUBSET_COLUMNS:
            table.add_column(col)
        for row in subsets:
            table.add_row(*row, style="dim" if row[-1] else None)
        out.append(table)
    ranking = Table(
        title=f"Ranking by {report.decision.objective} under the constraints", title_justify="left"
    )
    for col in ("rank", "target", "feasible", "why not"):
        ranking.add_column(col)
    for r in report.decision.ranking:
        ranking.add_row(str(r.rank), r.name, "yes" if r.feasible else "no", "; ".join(r.reasons))
    out.append(ranking)
    for name, text in report.decision.sentences.items():
        out.append(Text.assemble((f"{name}: ", "bold"), text))
    out.append(Text(report.decision.recommendation, style="bold green"))
    for q in report.decision.open_questions:
        out.append(Text(f"Open: {q}", style="yellow"))
    for note in report.notes:
        out.append(Text(f"Note: {note}", style="dim"))
    return out


def render_table(report: EvaluationReport, *, width: int = 160) -> str:
    """The terminal report as plain text (no colour codes), e.g. for a file."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    console.print(Group(*renderables(report)))
    return buf.getvalue()
