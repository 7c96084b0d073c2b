"""The analysis section validates, names bad fields as analysis.x.y, and picks scorer rules."""

import pytest

from analysis.settings import AnalysisSettings, from_settings, parse_analysis
from proxy.config import parse_settings
from proxy.errors import ConfigError


def test_defaults_need_no_config():
    s = parse_analysis(None)
    assert isinstance(s, AnalysisSettings)
    assert s.objective == "accuracy" and s.confidence.method == "none"
    assert s.target_precision == 0.95 and s.min_n == 30
    assert s.scorer_for("/v1/chat/completions", ["x"]).kind == "normalized"


def test_full_example_parses():
    s = parse_analysis(
        {
            "scorers": [
                {"route": "/v1/chat/*", "tag": "billing", "kind": "json_field", "path": "queue"},
                {"tag": "math", "kind": "numeric", "tolerance": 0.01},
                {"kind": "regex", "pattern": r"Answer: (?P<a>\w+)", "group": "a"},
                {"kind": "judge", "base_url": "http://127.0.0.1:9/v1", "model": "j"},
            ],
            "confidence": {"method": "verbalized", "path": "confidence"},
            "slo": {"latency_p95_ms": 1500, "ttft_p95_ms": 400},
            "constraints": {"max_error_rate": 0.02, "max_cost_per_1k_usd": 5},
            "objective": "expected_cost",
            "cost_matrix": {"approve->escalate": 50, "Approve": 20, "error": 2, "default": 1},
            "target_precision": 0.9,
            "conf_level": 0.9,
            "min_n": 20,
            "subsets": ["fr"],
        }
    )
    assert s.scorer_for("/v1/chat/completions", ["billing"]).kind == "json_field"
    assert s.scorer_for("/v1/completions", ["billing"]).kind == "regex"
    assert s.scorer_for("/v1/completions", ["math"]).kind == "numeric"
    assert s.alpha == pytest.approx(0.1)
    cm = s.cost_matrix
    assert cm is not None
    assert cm.cost("approve", "escalate", failed=False) == 50
    assert cm.cost(" APPROVE ", "reject", failed=False) == 20
    assert cm.cost("escalate", "approve", failed=False) == 1
    assert cm.cost(None, "approve", failed=True) == 2


def test_confidence_shorthand_and_error_cost_defaults_to_default():
    s = parse_analysis({"confidence": "logprobs", "cost_matrix": {"default": 3}})
    assert s.confidence.method == "logprobs" and s.confidence.mode == "first_token"
    assert s.cost_matrix is not None and s.cost_matrix.cost(None, None, failed=True) == 3


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"scorers": [{"kind": "regex"}]}, "analysis.scorers.0.pattern"),
        ({"scorers": [{"kind": "regex", "pattern": "(a"}]}, "analysis.scorers.0.pattern"),
        (
            {"scorers": [{"kind": "regex", "pattern": "(a)", "group": 2}]},
            "analysis.scorers.0.group",
        ),
        ({"scorers": [{}, {"kind": "json_field"}]}, "analysis.scorers.1.path"),
        ({"scorers": [{"kind": "bogus"}]}, "analysis.scorers.0.kind"),
        ({"scorers": [{"kind": "judge", "base_url": "ftp://x"}]}, "analysis.scorers.0.base_url"),
        ({"scorers": [{"kind": "judge", "base_url": "http://x/v1"}]}, "analysis.scorers.0.model"),
        ({"scorers": [{"kind": "numeric", "tolerance": -1}]}, "analysis.scorers.0.tolerance"),
        ({"objective": "expected_cost"}, "analysis.cost_matrix"),
        ({"cost_matrix": {"a": 1}}, "analysis.cost_matrix.default"),
        ({"cost_matrix": {"a": -1, "default": 1}}, "analysis.cost_matrix.a"),
        ({"cost_matrix": {"->b": 1, "default": 1}}, "analysis.cost_matrix.->b"),
        ({"slo": {"latency_p95_ms": 0}}, "analysis.slo.latency_p95_ms"),
        ({"constraints": {"max_error_rate": 2}}, "analysis.constraints.max_error_rate"),
        ({"confidence": {"method": "verbalized"}}, "analysis.confidence.path"),
        ({"confidence": "telepathy"}, "analysis.confidence.method"),
        ({"target_precision": 1.0}, "analysis.target_precision"),
        ({"min_n": 0}, "analysis.min_n"),
        ({"surprise": 1}, "analysis.surprise"),
    ],
)
def test_errors_name_the_field(data, where):
    with pytest.raises(ConfigError) as exc:
        parse_analysis(data, source="cfg.yaml")
    assert f"cfg.yaml: {where}:" in str(exc.value)


def test_not_a_mapping_is_rejected():
    with pytest.raises(ConfigError, match="analysis: must be a mapping"):
        parse_analysis(["x"])  # type: ignore[arg-type]


def test_replica_candidates_come_from_the_proxy_config():
    settings = parse_settings(
        {
            "production": {"base_url": "http://127.0.0.1:1/v1"},
            "candidates": [
                {
                    "name": "twin",
                    "base_url": "http://127.0.0.1:2/v1",
                    "model": "m",
                    "replica": True,
                },
                {"name": "b", "base_url": "http://127.0.0.1:3/v1", "model": "m"},
            ],
            "analysis": {"min_n": 10},
        }
    )
    a = from_settings(settings)
    assert a.replicas == ["twin"] and a.min_n == 10
