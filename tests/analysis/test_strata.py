"""Strata: tags, routes, and prompt clusters that recover planted topics without a model."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

import analysis.strata as strata_mod
from analysis.strata import (
    UNTAGGED,
    assign_strata,
    hashed_counts,
    kmeans,
    prompt_text,
    tags_stratum,
    text_strata,
)

TOPICS = {
    "billing": ["invoice", "charged", "refund", "payment", "card", "bill", "twice", "price"],
    "tech": ["error", "crash", "login", "password", "app", "install", "update", "screen"],
    "shipping": ["package", "delivery", "tracking", "courier", "arrived", "address", "parcel"],
}
FILLER = ["the", "my", "is", "help", "please", "today", "hello", "since", "yesterday", "still"]


def topic_texts(n: int, seed: int = 1) -> tuple[list[str], list[str]]:
    rnd = random.Random(seed)
    texts, truth = [], []
    for _ in range(n):
        topic = rnd.choice(sorted(TOPICS))
        words = rnd.choices(TOPICS[topic], k=4) + rnd.choices(FILLER, k=5)
        rnd.shuffle(words)
        texts.append(" ".join(words))
        truth.append(topic)
    return texts, truth


def purity(labels: list[str], truth: list[str]) -> float:
    pairs = Counter(zip(labels, truth, strict=True))
    best: dict[str, int] = {}
    for (lab, _), c in pairs.items():
        best[lab] = max(best.get(lab, 0), c)
    return sum(best.values()) / len(truth)


def test_prompt_text_from_each_api_shape() -> None:
    chat = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "where is my parcel"}]},
        ],
    }
    assert prompt_text(json.dumps(chat)) == "be brief\nwhere is my parcel"
    assert prompt_text(json.dumps({"prompt": "complete this"})) == "complete this"
    assert prompt_text(json.dumps({"input": [{"role": "user", "content": "hi"}]})) == "hi"
    assert prompt_text("not json at all") == "not json at all"
    assert prompt_text(None) == ""
    assert prompt_text(json.dumps({"model": "m"})) == ""


def test_tags_and_routes() -> None:
    assert tags_stratum(["email", "gold"]) == tags_stratum(["gold", "email", "email"])
    assert tags_stratum(["gold", "email"]) == "email+gold"
    assert tags_stratum([]) == UNTAGGED == tags_stratum(None)
    got = assign_strata(
        "route",
        tags=[None, None],
        routes=["/v1/chat/completions", None],
        texts=["", ""],
    )
    assert got == ["/v1/chat/completions", "(no route)"]
    with pytest.raises(ValueError, match="unknown strata strategy"):
        assign_strata("colour", tags=[], routes=[], texts=[])  # type: ignore[arg-type]


def test_kmeans_finds_separated_blobs() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(0, 3, size=600)
    x = centres[truth] + rng.standard_normal((600, 2))
    found, labels, inertia = kmeans(x, 3, seed=0)
    # Every true blob maps to exactly one cluster, and centres are near the truth.
    assert len({(t, lab) for t, lab in zip(truth, labels, strict=True)}) == 3
    for c in centres:
        assert np.min(np.linalg.norm(found - c, axis=1)) < 0.3
    assert inertia == pytest.approx(((x - found[labels]) ** 2).sum())


def test_hashed_vectors_are_fixed_size_and_deterministic() -> None:
    a = hashed_counts(["refund my card", ""])
    assert a.shape == (2, strata_mod.DIM) and a[1].sum() == 0
    assert np.array_equal(a, hashed_counts(["refund my card", ""]))


def test_text_clusters_recover_topics_and_name_them() -> None:
    texts, truth = topic_texts(900)
    labels = text_strata(texts, k=3, seed=0)
    assert purity(labels, truth) > 0.95
    assert sorted(set(labels))[0].startswith("text1:")
    named = {lab.split(":")[1] for lab in set(labels)}
    # Each name uses words of its topic.
    for topic, words in TOPICS.items():
        assert any(all(w in words for w in n.split(",")) for n in named), (topic, named)
    assert text_strata(texts, k=3, seed=0) == labels  # same input, same seed, same strata


def test_large_inputs_fit_on_a_sample_and_assign_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strata_mod, "FIT_SAMPLE", 300)
    texts, truth = topic_texts(1500, seed=5)
    labels = text_strata(texts, k=3, seed=1)
    assert len(labels) == 1500
    assert purity(labels, truth) > 0.95


def test_auto_uses_tags_and_clusters_only_untagged_requests() -> None:
    texts, truth = topic_texts(300, seed=2)
    tags: list[list[str] | None] = [["vip"] if i % 10 == 0 else None for i in range(300)]
    got = assign_strata("auto", tags=tags, routes=[None] * 300, texts=texts, k=3)
    assert all(g == "vip" for g, t in zip(got, tags, strict=True) if t)
    untagged = [i for i, t in enumerate(tags) if not t]
    assert purity([got[i] for i in untagged], [truth[i] for i in untagged]) > 0.95
    assert all(got[i].startswith("text") for i in untagged)
    # A few texts: one cluster, not an error.
    assert len(set(text_strata(["a", "b", "c"]))) == 1
