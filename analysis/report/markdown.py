"""The report as Markdown, short enough for a pull request description."""

from __future__ import annotations

from analysis.report.fmt import (
    AGREEMENT_NOTE,
    COLUMNS,
    SUBSET_COLUMNS,
    overview_rows,
    subset_rows,
)
from analysis.results import EvaluationReport


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: EvaluationReport) -> str:
    """Decision first, then the figures behind it."""
    d = report.decision
    es = f"`{report.eval_set}`" if report.eval_set else "all labelled requests"
    out = [
        "## shadoweval report",
        "",
        f"Eval set {es}: {report.n_labelled} labelled of {report.n_items} items; "
        f"{100 * report.conf_level:.0f}% intervals; generated {report.generated_at}.",
        "",
        f"**{d.recommendation}**",
        "",
    ]
    out += [f"- **{name}**: {text}" for name, text in d.sentences.items()]
    if d.open_questions:
        out += ["", "Open questions:", ""] + [f"- {q}" for q in d.open_questions]
    out += [
        "",
        "### Targets",
        "",
        md_table(COLUMNS, overview_rows(report)),
        "",
        f"_{AGREEMENT_NOTE}_",
    ]
    if report.noise_baseline is not None:
        n = report.noise_baseline
        out += [
            "",
            f"Noise baseline: production disagrees with its replica `{report.noise_replica}` on "
            f"{100 * n.value:.1f}% [{100 * n.lo:.1f}, {100 * n.hi:.1f}] of {n.n:,} requests.",
        ]
    subsets = subset_rows(report)
    if subsets:
        out += [
            "",
            "### Per subset",
            "",
            "p-values are Holm-adjusted across each target's subsets.",
            "",
        ]
        out.append(md_table(SUBSET_COLUMNS, subsets))
    ranking = [
        [str(r.rank), r.name, "yes" if r.feasible else "no", "; ".join(r.reasons)]
        for r in d.ranking
    ]
    out += [
        "",
        f"### Ranking by {d.objective}",
        "",
        md_table(("rank", "target", "feasible", "why not"), ranking),
    ]
    if report.notes:
        out += ["", *[f"> {n}" for n in report.notes]]
    return "\n".join(out) + "\n"
