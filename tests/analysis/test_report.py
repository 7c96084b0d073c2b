"""Every output format of the report, the offline HTML with its plots, and the CLI command."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from analysis.evaluate import evaluate
from analysis.report import FORMATS, render
from analysis.report import svg as svgmod
from analysis.settings import parse_analysis
from shadoweval.cli import main
from tests.analysis.lakefix import TargetSpec, synthetic_lake

SPECS = {
    "production": TargetSpec(0.85, latency_ms=600, cost_usd=0.001),
    "big": TargetSpec(0.92, "overconfident", latency_ms=1400, cost_usd=0.003),
    "small": TargetSpec(0.83, latency_ms=250, cost_usd=0.0002),
}
SETTINGS = {
    "confidence": "logprobs",
    "slo": {"latency_p95_ms": 1000},
    "cost_matrix": {"default": 2},
    "n_boot": 300,
}
CONFIG = """
production: {base_url: "http://127.0.0.1:9/v1"}
candidates:
  - {name: big, base_url: "http://127.0.0.1:9/v1", model: m}
  - {name: small, base_url: "http://127.0.0.1:9/v1", model: m}
storage: {data_dir: "%s"}
analysis:
  confidence: logprobs
  slo: {latency_p95_ms: 1000}
  n_boot: 300
"""


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    data = tmp_path_factory.mktemp("lake")
    synthetic_lake(data, 240, SPECS, seed=5, n_unlabelled=200, tags=("email", "chat", "fax"))
    return data


@pytest.fixture(scope="module")
def report(lake):
    return evaluate(lake, parse_analysis(SETTINGS))


class PageParser(HTMLParser):
    """Collects the tags, external references and scripts of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.svg_labels: list[str] = []
        self.external: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "svg":
            self.svg_labels.append(a.get("aria-label") or "")
        if tag == "script":
            self.scripts.append(a)
        for key in ("src", "href"):
            if a.get(key) and re.match(r"^(https?:)?//", a[key] or ""):
                self.external.append(a[key] or "")

    def handle_data(self, data):
        self.text.append(data)


def test_every_format_renders_the_decision(report):
    for fmt in FORMATS:
        text = render(report, fmt)
        assert report.decision.recommendation.split(":")[0] in text, fmt
        for name in ("production", "big", "small"):
            assert name in text, (fmt, name)


def test_json_has_every_number_and_no_nan(report):
    data = json.loads(render(report, "json"))
    assert data["schema"] == "shadoweval.report/1"
    big = next(t for t in data["targets"] if t["name"] == "big")
    for key in ("value", "lo", "hi", "n", "method"):
        assert key in big["accuracy"]
    assert set(big["paired"]) >= {"diff", "p_value", "b", "c", "n", "mde", "n_needed"}
    assert big["latency"]["p95"]["hi"] >= big["latency"]["p95"]["lo"]
    assert big["calibration"]["raw"]["ece"]["value"] > 0
    assert big["calibration"]["raw"]["bins"]
    assert big["cost"]["expected_per_1k"]["value"] > 0
    assert big["checks"][0]["metric"] == "latency_p95_ms" and "feasible" in big["checks"][0]
    assert data["decision"]["sentences"]["big"] == report.decision.sentences["big"]
    assert "api_key" not in json.dumps(data["settings"])
    assert "NaN" not in render(report, "json")


def test_table_is_plain_text_with_every_section(report):
    text = render(report, "table", width=200)
    assert "\x1b[" not in text
    for part in ("accuracy", "p95 latency ms", "Per subset", "Ranking by accuracy", "agreement"):
        assert part in text
    assert report.decision.sentences["small"][:40] in text.replace("\n", " ") or "small:" in text


def test_markdown_tables_are_well_formed(report):
    text = render(report, "markdown")
    assert text.startswith("## shadoweval report")
    tables = [line for line in text.splitlines() if line.startswith("|")]
    header = tables[0]
    assert header.count("|") == tables[1].count("|")
    assert "| target | accuracy |" in header
    assert "### Per subset" in text and "Holm" in text
    assert f"**{report.decision.recommendation}**" in text


def test_html_is_self_contained_with_its_plots(report):
    page = render(report, "html")
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert parser.external == []
    assert all(s.get("type") == "application/json" and not s.get("src") for s in parser.scripts)
    labels = parser.svg_labels
    assert "Latency CDF" in labels
    assert sum(label.startswith("Reliability: ") for label in labels) == 3
    assert "Risk against coverage" in labels
    assert "Accuracy against cost" in labels
    assert any(label.endswith("by subset") for label in labels)
    assert parser.tags.count("polyline") >= 6 and "circle" in parser.tags
    assert "table" in parser.tags
    embedded = page.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded.replace("<\\/", "</"))["eval_set"] == report.eval_set


def test_svg_helpers():
    assert svgmod.nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert svgmod.nice_ticks(0, 1370) == [0, 500, 1000]
    assert svgmod.nice_ticks(0, 900)[:3] == [0, 200, 400]
    out = svgmod.forest_plot("f", [("a", 1.0, -1.0, 3.0, False), ("b<&>", 2.0, 1.0, 3.0, True)])
    parser = PageParser()
    parser.feed(out)
    assert parser.tags.count("line") >= 3 and "b&lt;&amp;&gt;" in out
    empty = svgmod.cdf_chart("empty", [], "ms")
    assert empty.startswith("<svg")


def test_cli_report_formats_and_files(lake, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG % lake)
    out = tmp_path / "r.html"
    assert main(["report", "--config", str(cfg), "--format", "html", "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", "--data", str(lake), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {t["name"] for t in data["targets"]} == {"production", "big", "small"}
    assert main(["report", "--data", str(lake), "--format", "markdown", "--eval-set", "es"]) == 0
    assert capsys.readouterr().out.startswith("## shadoweval report")
    assert main(["report", "--data", str(lake)]) == 0
    assert "Ranking by accuracy" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["report", "--data", str(tmp_path / "missing")]) == 2
    assert "no lake at" in capsys.readouterr().err
    assert main(["report", "--data", str(tmp_path), "--eval-set", "nope"]) == 2
    assert "unknown eval set 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text('production: {base_url: "http://x/v1"}\nanalysis: {min_n: 0}\n')
    assert main(["report", "--config", str(bad), "--data", str(tmp_path)]) == 2
    assert "analysis.min_n" in capsys.readouterr().err
