"""The report as JSON: every number, for machines (NaN and infinities become null)."""

from __future__ import annotations

import json

from analysis.results import EvaluationReport

SCHEMA = "shadoweval.report/1"


def render_json(report: EvaluationReport) -> str:
    """Indented JSON of the whole report, with a schema tag first."""
    return json.dumps(
        {"schema": SCHEMA, **report.to_dict()}, indent=2, ensure_ascii=False, allow_nan=False
    )
