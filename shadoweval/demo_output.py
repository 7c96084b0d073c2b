"""What the demo prints: numbered steps, what the lake holds, the decision, and what to try next."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table

from analysis.results import PRODUCTION, EvaluationReport
from proxy.lake.reader import connect
from shadoweval.demo_traffic import TrafficSummary

# The overview columns that fit a terminal; the reports have them all.
COMPACT_COLUMNS = (
    "target",
    "accuracy",
    "Δ vs production (points)",
    "p95 latency ms",
    "$ / 1k",
    "ECE (→ recal.)",
    "threshold",
    "constraints",
)


class Steps:
    """Numbered step headers, and the time each step took."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total, self.n = console, total, 0
        self.timings: dict[str, float] = {}
        self._name: str | None = None
        self._started = 0.0

    def start(self, name: str, text: str) -> None:
        self.done()
        self.n += 1
        self._name, self._started = name, time.perf_counter()
        self.console.print(f"\n[bold cyan]{self.n}/{self.total}[/] {text}")

    def done(self) -> None:
        if self._name is not None:
            self.timings[self._name] = time.perf_counter() - self._started
            self._name = None


def recorded_table(data_dir: Path) -> Table:
    """What the proxy wrote: requests, and calls per target with their outcome and latency."""
    con = connect(data_dir)
    try:
        n_req, n_mirrored = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE mirrored) FROM requests"
        ).fetchone() or (0, 0)
        rows = con.execute(
            """SELECT target, count(*),
                      count(*) FILTER (WHERE error IS NULL),
                      count(*) FILTER (WHERE error IN ('timeout', 'connect', 'http', 'invalid')),
                      count(*) FILTER (WHERE error IN ('dropped', 'budget')),
                      median(latency_ms) FILTER (WHERE error IS NULL),
                      quantile_cont(latency_ms, 0.95) FILTER (WHERE error IS NULL)
               FROM responses GROUP BY target ORDER BY target <> 'production', target"""
        ).fetchall()
    finally:
        con.close()
    table = Table(
        title=f"The lake: {n_req:,} requests, {n_mirrored:,} of them mirrored", title_justify="left"
    )
    for col in ("target", "calls", "answered", "failed", "not made", "p50 ms", "p95 ms"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for target, calls, ok, failed, dropped, p50, p95 in rows:
        lat = [f"{x:,.0f}" if x is not None else "–" for x in (p50, p95)]
        table.add_row(target, f"{calls:,}", f"{ok:,}", str(failed), str(dropped), *lat)
    return table


def decision_renderables(report: EvaluationReport) -> list[Any]:
    """The decision for a terminal: a compact overview, the ranking and the sentences.

    The full overview and the per-subset table are in the HTML and Markdown reports.
    """
    from analysis.report.fmt import COLUMNS, overview_rows
    from analysis.report.table import renderables

    idx = [COLUMNS.index(c) for c in COMPACT_COLUMNS if c in COLUMNS]
    table = Table(
        title=f"Eval set {report.eval_set}: {report.n_labelled} labelled items, "
        f"{100 * report.conf_level:.0f}% intervals",
        title_justify="left",
    )
    for i in idx:
        table.add_column(COLUMNS[i], no_wrap=i == 0, overflow="fold")
    for row in overview_rows(report):
        table.add_row(*(row[i] for i in idx))
    replaced = ("shadoweval report", "Per subset")  # the full overview and the subsets
    rest = [
        r
        for r in renderables(report)
        if not (isinstance(r, Table) and str(r.title or "").startswith(replaced))
    ]
    return [table, *rest]


def sql_examples(data_dir: Path) -> list[str]:
    """Queries worth trying on the demo's lake, as whole command lines."""
    queries = [
        "SELECT target, source, count(*) AS calls, round(quantile_cont(latency_ms, 0.95)) AS p95_ms, "
        "round(1000 * avg(cost_usd), 3) AS usd_per_1k FROM responses WHERE error IS NULL "
        "GROUP BY ALL ORDER BY p95_ms",
        "SELECT tag, count(*) AS requests, round(avg(sample_rate), 2) AS sample_rate, "
        "count(*) FILTER (WHERE mirrored) AS mirrored FROM (SELECT unnest(tags) AS tag, "
        "sample_rate, mirrored FROM requests) GROUP BY tag ORDER BY tag",
        "SELECT r.target, count(*) AS n, round(avg((lower(trim(r.output_text)) = "
        "json_extract_string(l.value, '$'))::INT), 3) AS unweighted_accuracy "
        "FROM responses r JOIN labels_latest l USING (request_id) "
        "WHERE l.kind = 'reference' AND r.error IS NULL GROUP BY r.target ORDER BY 3 DESC",
    ]
    data = shlex.quote(str(data_dir))
    return [f"shadoweval sql --data {data} {shlex.quote(q)}" for q in queries]


def print_summary(
    console: Console,
    report: EvaluationReport,
    traffic: TrafficSummary,
    reports: dict[str, Path],
    data_dir: Path,
    timings: dict[str, float],
    elapsed_s: float,
) -> None:
    """The decision, how close the estimate came to the truth, and what to open and try next."""
    console.print()
    console.print(Group(*decision_renderables(report)))
    prod = report.target(PRODUCTION).accuracy
    if prod is not None and traffic.answered:
        truth = traffic.correct / traffic.answered
        console.print(
            f"\nProduction's real accuracy on all {traffic.answered:,} answered requests (known "
            f"only because the models are simulated): {100 * truth:.1f}%. The report estimated it "
            f"from {prod.n} labels: {100 * prod.value:.1f}% [{100 * prod.lo:.1f}, {100 * prod.hi:.1f}]."
        )
    took = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    console.print(f"\nDemo finished in {elapsed_s:.0f} s ({took}).")
    console.print(f"Open the report: [bold]{reports['html']}[/]")
    console.print(f"  (also {reports['markdown']} and {reports['json']})")
    console.print(f"Query the lake ({data_dir}) with SQL, for instance:")
    for line in sql_examples(data_dir):
        console.print(f"  {line}", soft_wrap=True, highlight=False, markup=False)
