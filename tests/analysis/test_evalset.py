"""Eval sets on a real lake: the frame, strata, frozen builds, export and labelling status."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.evalset import (
    BuildOptions,
    build_eval_set,
    eval_set_status,
    export_eval_set,
    list_eval_sets,
)
from proxy.errors import InputError
from proxy.lake.reader import connect
from proxy.lake.writer import write_rows

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def chat(text: str) -> str:
    return json.dumps({"model": "prod", "messages": [{"role": "user", "content": text}]})


def req(rid: str, text: str, **kw: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "received_at": kw.pop("at", T0),
        "route": kw.pop("route", "/v1/chat/completions"),
        "model": "prod",
        "stream": False,
        "body": chat(text),
        "prompt_hash": kw.pop("prompt_hash", f"h-{rid}"),
        "tags": kw.pop("tags", []),
        "sample_rate": kw.pop("sample_rate", 1.0),
        "mirrored": kw.pop("mirrored", True),
        **kw,
    }


def resp(rid: str, target: str, text: str | None, error: str | None = None) -> dict[str, Any]:
    return {
        "request_id": rid,
        "target": target,
        "source": "live",
        "started_at": T0,
        "output_text": text,
        "error": error,
        "status": 200,
    }


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """300 email, 60 chat, 10 voice requests; candidates disagree on every 5th email."""
    rows, answers = [], []
    for i in range(370):
        tag = "email" if i < 300 else "chat" if i < 360 else "voice"
        rid = f"r{i:04d}"
        rows.append(req(rid, f"question {i} about {tag}", tags=[tag]))
        answers.append(resp(rid, "production", "Billing."))
        answers.append(resp(rid, "cand", "billing" if i % 5 or tag != "email" else "refund"))
    # Not in the frame: a duplicate prompt, an embeddings call, content omitted.
    rows.append(
        req(
            "dup",
            "question 1 about email",
            tags=["email"],
            prompt_hash="h-r0001",
            at=T0 + timedelta(hours=1),
        )
    )
    rows.append(req("emb", "embed me", route="/v1/embeddings", tags=["email"]))
    rows.append({**req("omitted", "x", tags=["email"]), "body": None, "content_omitted": True})
    write_rows(tmp_path, "requests", rows, kind="test")
    write_rows(tmp_path, "responses", answers, kind="test")
    return tmp_path


def items(data_dir: Path, name: str) -> list[tuple[str, str, float]]:
    return (
        connect(data_dir)
        .execute(
            "SELECT request_id, stratum, inclusion_prob FROM eval_sets WHERE eval_set = $n "
            "ORDER BY request_id",
            {"n": name},
        )
        .fetchall()
    )


def test_build_with_minimum_per_stratum(lake: Path) -> None:
    got = build_eval_set(lake, BuildOptions("v1", 60, min_per_stratum=10, strata="tags"))
    assert got.selection.population == {"email": 300, "chat": 60, "voice": 10}
    assert got.selection.allocation == {"email": 40, "chat": 10, "voice": 10}
    rows = items(lake, "v1")
    assert len(rows) == 60
    probs = {s: {p for _, st, p in rows if st == s} for s in ("email", "chat", "voice")}
    assert probs == {"email": {40 / 300}, "chat": {10 / 60}, "voice": {1.0}}
    assert not {"dup", "emb", "omitted"} & {r[0] for r in rows}


def test_the_frame_excludes_duplicates_embeddings_and_omitted_content(lake: Path) -> None:
    got = build_eval_set(lake, BuildOptions("all", 370, strata="tags"))
    ids = {r[0] for r in items(lake, "all")}
    assert len(ids) == 370 and "r0001" in ids and not {"dup", "emb", "omitted"} & ids
    with pytest.raises(InputError, match="more than the 370"):
        build_eval_set(lake, BuildOptions("too-many", 371, strata="tags"))
    assert got.disagreeing == 0  # not computed without oversampling
    only_emb = build_eval_set(lake, BuildOptions("emb", 1, route="/v1/embeddings"))
    assert only_emb.selection.request_ids == ["emb"]


def test_frozen_names_and_invalid_names(lake: Path) -> None:
    build_eval_set(lake, BuildOptions("frozen", 20, strata="tags"))
    before = items(lake, "frozen")
    with pytest.raises(InputError, match="already exists and is frozen"):
        build_eval_set(lake, BuildOptions("frozen", 30, strata="tags", seed=5))
    assert items(lake, "frozen") == before
    with pytest.raises(InputError, match="invalid eval set name"):
        build_eval_set(lake, BuildOptions("../x", 20))


def test_filters_and_two_phase_probabilities(tmp_path: Path) -> None:
    rows = [
        req(f"m{i}", f"mirrored {i}", tags=["t"], sample_rate=0.1, mirrored=True,
            at=T0 + timedelta(days=i % 2))
        for i in range(40)
    ]  # fmt: skip
    rows += [
        req(f"n{i}", f"plain {i}", tags=["t"], sample_rate=0.1, mirrored=False) for i in range(60)
    ]
    write_rows(tmp_path, "requests", rows, kind="test")
    got = build_eval_set(tmp_path, BuildOptions("m", 10, strata="tags", only_mirrored=True))
    assert got.selection.population == {"t": 40}
    assert [p for _, _, p in items(tmp_path, "m")] == [pytest.approx(10 / 40 * 0.1)] * 10
    day2 = build_eval_set(
        tmp_path,
        BuildOptions("day2", 5, strata="tags", since=T0 + timedelta(hours=12), only_mirrored=True),
    )
    assert day2.selection.population == {"t": 20}
    assert all(int(r[1:]) % 2 == 1 for r in day2.selection.request_ids)
    before = build_eval_set(
        tmp_path, BuildOptions("all", 5, strata="tags", until=T0 + timedelta(hours=1))
    )
    assert before.selection.population == {"t": 80}
    assert [p for _, _, p in items(tmp_path, "all")] == [pytest.approx(5 / 80)] * 5
    with pytest.raises(InputError, match="no recorded requests match"):
        build_eval_set(tmp_path, BuildOptions("none", 5, route="/v1/nothing"))


def test_oversampling_disagreement_raises_their_share_and_keeps_weights_honest(
    lake: Path,
) -> None:
    got = build_eval_set(
        lake, BuildOptions("dis", 60, strata="tags", oversample_disagreement=4.0, seed=1)
    )
    # Every 5th email; "Billing." and "billing" are the same answer after normalisation.
    assert got.disagreeing == 60
    rows = items(lake, "dis")
    email = [(rid, p) for rid, s, p in rows if s == "email"]
    dis = [p for rid, p in email if int(rid[1:]) % 5 == 0]
    agree = [p for rid, p in email if int(rid[1:]) % 5]
    assert len(set(dis)) == len(set(agree)) == 1
    assert dis[0] / agree[0] == pytest.approx(4.0, rel=0.2)
    # Weights still add up to the frame, stratum by stratum.
    for s, n in {"email": 300, "chat": 60, "voice": 10}.items():
        assert sum(1 / p for _, st, p in rows if st == s) == pytest.approx(n)
    with pytest.raises(InputError, match="at least 1"):
        build_eval_set(lake, BuildOptions("bad", 10, oversample_disagreement=0.5))


def test_auto_strata_cluster_untagged_text(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    topics = {
        "refund": "refund my invoice charged twice card payment",
        "crash": "app crash login error password screen",
    }
    rows = []
    for i in range(200):
        topic = "refund" if i % 2 else "crash"
        words = [*rng.choice(topics[topic].split(), size=5).tolist(), "please", "help"]
        rows.append(req(f"t{i:03d}", " ".join(words)))
    write_rows(tmp_path, "requests", rows, kind="test")
    got = build_eval_set(tmp_path, BuildOptions("auto", 20, clusters=2))
    assert len(got.selection.population) == 2
    assert sorted(got.selection.population.values()) == [100, 100]
    strata = {rid: s for rid, s, _ in items(tmp_path, "auto")}
    for rid, s in strata.items():
        same_parity = [r for r, t in strata.items() if int(r[1:]) % 2 == int(rid[1:]) % 2]
        assert all(strata[r] == s for r in same_parity)


def test_export_status_and_list(lake: Path) -> None:
    build_eval_set(lake, BuildOptions("ex", 30, min_per_stratum=5, strata="tags"))
    ids = [r[0] for r in items(lake, "ex")]
    voice = [r[0] for r in items(lake, "ex") if r[1] == "voice"]
    now = T0 + timedelta(days=1)
    write_rows(
        lake,
        "labels",
        [
            {"label_id": "L1", "request_id": ids[0], "kind": "reference", "value": '"billing"',
             "source": "human", "created_at": now},
            {"label_id": "L2", "request_id": voice[0], "kind": "verdict", "target": "cand",
             "value": "true", "source": "human", "created_at": now},
            {"label_id": "L3", "request_id": voice[1], "kind": "outcome", "value": "1",
             "source": "system", "created_at": now},
        ],
        kind="test",
    )  # fmt: skip
    out = io.StringIO()
    assert export_eval_set(lake, "ex", out) == 30
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    first = next(x for x in lines if x["request_id"] == ids[0])
    assert first["messages"][0]["content"].startswith("question")
    assert first["reference"] == "billing"
    assert first["weight"] == pytest.approx(1 / first["inclusion_prob"])
    assert first["tags"] == [first["stratum"]]
    assert [lab["kind"] for lab in first["labels"]] == ["reference"]
    assert sum(1 for x in lines if "labels" in x) == 3

    status = eval_set_status(lake, "ex")
    assert status.total.items == 30 and status.total.labelled == 2 and status.total.missing == 28
    by = {s.stratum: s for s in status.strata}
    assert by["voice"].items == 5 and by["voice"].with_verdict == 1 and by["voice"].labelled == 1
    assert status.outputs == {"cand": 30, "production": 30}
    assert len(status.missing_ids) == 20 and ids[0] not in status.missing_ids

    build_eval_set(lake, BuildOptions("ex2", 5, strata="route"))
    listed = list_eval_sets(lake)
    assert [(x["name"], x["items"], x["strata"]) for x in listed] == [("ex", 30, 3), ("ex2", 5, 1)]
    with pytest.raises(InputError, match="unknown eval set 'nope'"):
        eval_set_status(lake, "nope")
