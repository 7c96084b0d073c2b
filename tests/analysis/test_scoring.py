"""Each scorer kind on realistic outputs, verdict parsing, and verdict override/inheritance."""

import math

import pytest

from analysis.scoring import (
    Verdict,
    apply_verdicts,
    compare,
    extract,
    normalize,
    parse_verdict,
    score_outputs,
)
from analysis.settings import ScorerRule


def score(rule: ScorerRule, text: str | None, ref) -> float:
    s, _ = score_outputs(rule, [text], [ref])
    return s[0]


def test_normalize_folds_case_punctuation_width_and_space():
    assert normalize("  The   ANSWER!! ") == "the answer"
    assert normalize("Ｂｉｌｌｉｎｇ.") == "billing"
    assert normalize("re-route_now") == "re route now"


@pytest.mark.parametrize(
    ("kind", "extra", "output", "ref", "expected"),
    [
        ("exact", {}, " billing\n", "billing", 1.0),
        ("exact", {}, "Billing", "billing", 0.0),
        ("exact", {}, '{"a": 1, "b": [2]}', {"b": [2], "a": 1}, 1.0),
        ("normalized", {}, "Billing.", "billing", 1.0),
        ("normalized", {}, "billing team", "billing", 0.0),
        ("json_field", {"path": "queue"}, '```json\n{"queue": "Refund"}\n```', "refund", 1.0),
        ("json_field", {"path": "queue"}, 'Sure: {"queue": "refund"} hope it helps', "refund", 1.0),
        ("json_field", {"path": "a.0.b"}, '{"a": [{"b": 3}]}', 3, 1.0),
        ("json_field", {"path": "queue"}, '{"queue": "refund"}', {"queue": "billing"}, 0.0),
        ("json_field", {"path": "queue"}, '{"queue": "refund"}', {"queue": "refund"}, 1.0),
        ("json_field", {"path": "queue"}, "not json", "refund", 0.0),
        ("regex", {"pattern": r"Queue: (\w+)"}, "I think... Queue: Billing", "billing", 1.0),
        ("regex", {"pattern": r"Queue: (\w+)"}, "no idea", "billing", 0.0),
        ("choice", {}, "The answer is (C).", "C", 1.0),
        ("choice", {}, "B) because of X", "B", 1.0),
        ("choice", {}, "b", "B", 1.0),
        ("choice", {}, "Answer: D", "C) Paris", 0.0),
        ("choice", {"choices": "ABCD"}, "Answer: E", "E", 0.0),
        ("numeric", {}, "So the total is 1,234.5 dollars", 1234.5, 1.0),
        ("numeric", {"tolerance": 0.1}, "about 3.05 or 3.14", "3.2", 1.0),
        ("numeric", {"tolerance": 0.01}, "3.14", "3.2", 0.0),
        ("numeric", {"relative": 0.05}, "-98", -100, 1.0),
        ("numeric", {}, "no number", 5, 0.0),
        ("contains", {}, "Please route to the Billing team.", "billing", 1.0),
        ("contains", {}, "eyes", "yes", 0.0),
    ],
)
def test_scorer_kinds(kind, extra, output, ref, expected):
    assert score(ScorerRule(kind=kind, **extra), output, ref) == expected


def test_failed_call_without_output_is_wrong_and_unlabelled_is_unknown():
    rule = ScorerRule(kind="normalized")
    assert score(rule, None, "billing") == 0.0
    assert math.isnan(score(rule, "billing", None))
    assert math.isnan(score(ScorerRule(kind="judge", base_url="http://x/v1", model="m"), "x", "x"))


def test_extraction_spans_point_at_the_answer():
    text = 'Here: {"queue": "refund", "confidence": 0.8}'
    ex = extract(ScorerRule(kind="json_field", path="queue"), text)
    assert ex.answer == "refund" and ex.span is not None
    assert text[ex.span[0] : ex.span[1]] == "refund"
    ex = extract(ScorerRule(kind="choice"), "Option (B) is right")
    assert ex.span is not None and "Option (B) is right"[ex.span[0]] == "B"
    ex = extract(ScorerRule(kind="normalized"), "  billing \n")
    assert ex.span == (2, 9)


def test_compare_uses_reference_objects():
    rule = ScorerRule(kind="normalized")
    assert compare(rule, extract(rule, "Refund"), "Refund", {"answer": "refund"}) == 1.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, 1.0),
        (False, 0.0),
        ("correct", 1.0),
        ("Incorrect", 0.0),
        ("0.7", 0.7),
        (0.25, 0.25),
        ({"correct": True}, 1.0),
        ({"score": 0.4}, 0.4),
        ('{"verdict": "wrong"}', 0.0),
        (3, math.nan),
        ("maybe", math.nan),
        (None, math.nan),
    ],
)
def test_parse_verdict(value, expected):
    got = parse_verdict(value)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_own_verdict_overrides_and_identical_outputs_inherit():
    rids = ["r1", "r1", "r1", "r2", "r2"]
    targets = ["production", "a", "b", "production", "a"]
    texts = ["Billing.", "billing", "refund", "x", None]
    scores = [1.0, 1.0, 0.0, math.nan, 0.0]
    verdicts = {
        ("r1", "production"): Verdict(0.0, 10.0),  # human says production was wrong
        ("r2", "production"): Verdict(1.0, 10.0),
    }
    out, origin = apply_verdicts(rids, targets, texts, scores, verdicts)
    assert out == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert origin == ["verdict", "inherited", "scorer", "verdict", "scorer"]


def test_newest_verdict_wins_among_identical_outputs():
    rids = ["r1"] * 3
    targets = ["a", "b", "c"]
    texts = ["yes", "YES", "yes!"]
    verdicts = {("r1", "a"): Verdict(0.0, 1.0), ("r1", "b"): Verdict(1.0, 2.0)}
    out, origin = apply_verdicts(rids, targets, texts, [math.nan] * 3, verdicts)
    assert out == [0.0, 1.0, 1.0]
    assert origin == ["verdict", "verdict", "inherited"]
