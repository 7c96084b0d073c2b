"""The report in four formats: a terminal table, JSON, Markdown and a self-contained HTML page."""

from __future__ import annotations

from analysis.results import EvaluationReport

FORMATS = ("table", "json", "markdown", "html")


def render(report: EvaluationReport, fmt: str, *, width: int = 160) -> str:
    """The report as text in one of FORMATS."""
    if fmt == "table":
        from analysis.report.table import render_table

        return render_table(report, width=width)
    if fmt == "json":
        from analysis.report.json import render_json

        return render_json(report)
    if fmt == "markdown":
        from analysis.report.markdown import render_markdown

        return render_markdown(report)
    if fmt == "html":
        from analysis.report.html import render_html

        return render_html(report)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
