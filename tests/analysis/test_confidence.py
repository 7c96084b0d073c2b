"""Confidence from recorded logprobs (first answer token, product) and from verbalized numbers."""

import json
import math

import numpy as np
import pytest

from analysis.confidence import (
    confidences,
    first_token_probability,
    logprob_confidence,
    parse_logprobs,
    verbalized_confidence,
)
from analysis.scoring import extract
from analysis.settings import ConfidenceSettings, ScorerRule


def tok(text: str, p: float, top: list[tuple[str, float]] | None = None) -> dict:
    return {
        "token": text,
        "logprob": math.log(p),
        "top_logprobs": [{"token": t, "logprob": math.log(q)} for t, q in (top or [])],
    }


JSON_OUT = '{"queue": "billing"}'
JSON_TOKENS = [
    tok('{"', 0.99),
    tok("queue", 0.99),
    tok('":', 0.99),
    tok(' "', 0.98),
    tok("bill", 0.6, [("bill", 0.6), ("Bill", 0.1), ("ref", 0.2), ("tech", 0.1)]),
    tok("ing", 0.95),
    tok('"}', 0.99),
]


def test_parse_logprobs_accepts_list_or_content_object_and_rejects_junk():
    assert parse_logprobs(json.dumps(JSON_TOKENS))[4].text == "bill"
    assert len(parse_logprobs(json.dumps({"content": JSON_TOKENS, "refusal": None}))) == 7
    for bad in (None, "", "not json", "[1, 2]", '{"content": null}', '[{"token": "a"}]'):
        assert parse_logprobs(bad) is None


def test_first_answer_token_sums_its_spelling_variants():
    rule = ScorerRule(kind="json_field", path="queue")
    found = extract(rule, JSON_OUT)
    conf = logprob_confidence(json.dumps(JSON_TOKENS), JSON_OUT, found, "first_token")
    assert conf == pytest.approx(0.7)  # "bill" 0.6 + "Bill" 0.1, not the JSON syntax tokens


def test_product_multiplies_the_answer_tokens_only():
    found = extract(ScorerRule(kind="json_field", path="queue"), JSON_OUT)
    conf = logprob_confidence(json.dumps(JSON_TOKENS), JSON_OUT, found, "product")
    assert conf == pytest.approx(0.6 * 0.95)


def test_token_missing_from_its_top_list_still_counts():
    t = parse_logprobs(json.dumps([tok("A", 0.5, [("B", 0.3), (" a", 0.1)])]))
    assert t is not None
    assert first_token_probability(t[0]) == pytest.approx(0.6)


def test_whole_output_answer_skips_leading_blank_tokens():
    tokens = [tok("\n", 0.9), tok("Refund", 0.8, [("Refund", 0.8), ("Billing", 0.2)])]
    found = extract(ScorerRule(kind="normalized"), "\nRefund")
    assert logprob_confidence(json.dumps(tokens), "\nRefund", found) == pytest.approx(0.8)


def test_text_mismatch_falls_back_to_searching_the_answer():
    tokens = [tok("Answer", 0.9), tok(":", 0.9), tok(" C", 0.4, [(" C", 0.4), ("C", 0.2)])]
    found = extract(ScorerRule(kind="choice"), "Answer: C")
    # The recorded text differs from the tokens (e.g. trimmed), so the span is searched.
    assert logprob_confidence(json.dumps(tokens), "Answer:  C", found) == pytest.approx(0.6)


def test_no_logprobs_is_unknown():
    found = extract(ScorerRule(kind="normalized"), "x")
    assert math.isnan(logprob_confidence(None, "x", found))


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('{"queue": "x", "confidence": 0.83}', 0.83),
        ('{"queue": "x", "confidence": "83%"}', 0.83),
        ('{"queue": "x", "confidence": 83}', 0.83),
        ('{"queue": "x", "confidence": 180}', math.nan),
        ('{"queue": "x"}', math.nan),
        ("plain text", math.nan),
    ],
)
def test_verbalized_json_field(output, expected):
    got = verbalized_confidence(output, ConfidenceSettings(method="verbalized", path="confidence"))
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_verbalized_regex_and_vector():
    s = ConfidenceSettings(method="verbalized", pattern=r"[Cc]onfidence:\s*([\d.]+%?)")
    outs = ["billing\nConfidence: 90%", "refund (confidence: 0.4)", None]
    got = confidences(s, outs, [None] * 3, [extract(ScorerRule(), o) for o in outs])
    np.testing.assert_allclose(got, [0.9, 0.4, np.nan])
    assert np.isnan(confidences(ConfidenceSettings(), outs, [None] * 3, [None] * 3)).all()
