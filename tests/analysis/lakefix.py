"""Lake fixtures for the analysis tests: rows written with proxy.lake.writer.write_rows.

`LakeBuilder` collects requests, responses, labels and eval-set rows and writes them as real
Parquet segments. `synthetic_lake` draws a scenario with known truth: each target answers
a support ticket with a queue name, correct with probability sigmoid(a_t + s * z_i) where
z_i is the item's shared difficulty, so targets are correlated as real models are; a
calibrated target reports exactly that probability through OpenAI-format logprobs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq

from proxy.lake.writer import write_rows

QUEUES = ("billing", "technical", "account", "refund", "shipping")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def chat_body(text: str, model: str = "prod-model") -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}]})


def logprobs_json(answer: str, p: float, alternatives: tuple[str, ...] = QUEUES) -> str:
    """One-token answer with probability p; the rest of the mass spread over alternatives."""
    others = [a for a in alternatives if a != answer][:4]
    rest = max(1.0 - p, 1e-9) / max(len(others), 1)
    top = [{"token": answer, "logprob": math.log(max(p, 1e-12))}]
    top += [{"token": o, "logprob": math.log(rest)} for o in others]
    return json.dumps([{"token": answer, "logprob": math.log(max(p, 1e-12)), "top_logprobs": top}])


@dataclass
class LakeBuilder:
    """Rows for the four datasets, written in one go."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    eval_sets: list[dict[str, Any]] = field(default_factory=list)

    def request(
        self,
        rid: str,
        *,
        text: str = "my invoice is wrong",
        tags: list[str] | None = None,
        route: str = "/v1/chat/completions",
        session: str | None = None,
        mirrored: bool = True,
        at: datetime = T0,
    ) -> None:
        self.requests.append(
            {
                "request_id": rid,
                "received_at": at,
                "route": route,
                "method": "POST",
                "model": "prod-model",
                "stream": False,
                "body": chat_body(text),
                "prompt_hash": f"h-{rid}",
                "session_id": session,
                "tags": tags or [],
                "sample_rate": 1.0,
                "mirrored": mirrored,
            }
        )

    def response(
        self,
        rid: str,
        target: str,
        text: str | None,
        *,
        latency_ms: float = 100.0,
        ttft_ms: float | None = None,
        cost_usd: float | None = 0.001,
        error: str | None = None,
        logprobs: str | None = None,
        source: str = "live",
        attempt: int = 0,
        at: datetime = T0,
    ) -> None:
        self.responses.append(
            {
                "request_id": rid,
                "target": target,
                "source": source,
                "model": f"{target}-model",
                "status": None if error in ("timeout", "connect", "dropped", "budget") else 200,
                "error": error,
                "started_at": at,
                "ttft_ms": ttft_ms,
                "latency_ms": None if error in ("dropped", "budget") else latency_ms,
                "output_text": None if error else text,
                "finish_reason": None if error else "stop",
                "prompt_tokens": 20,
                "completion_tokens": 2,
                "cost_usd": cost_usd,
                "logprobs": logprobs,
                "stream": ttft_ms is not None,
                "attempt": attempt,
            }
        )

    def label(
        self,
        rid: str,
        kind: str,
        value: Any,
        *,
        target: str | None = None,
        source: str = "human",
        at: datetime = T0 + timedelta(days=1),
    ) -> None:
        self.labels.append(
            {
                "label_id": f"l{len(self.labels):06d}",
                "request_id": rid,
                "kind": kind,
                "target": target,
                "value": json.dumps(value),
                "labeller": "tester",
                "source": source,
                "created_at": at,
            }
        )

    def item(
        self,
        eval_set: str,
        rid: str,
        *,
        stratum: str = "all",
        inclusion_prob: float = 1.0,
        at: datetime = T0 + timedelta(hours=1),
    ) -> None:
        self.eval_sets.append(
            {
                "eval_set": eval_set,
                "request_id": rid,
                "stratum": stratum,
                "inclusion_prob": inclusion_prob,
                "created_at": at,
            }
        )

    def write(self, data_dir: Path) -> Path:
        for name in ("requests", "responses", "labels", "eval_sets"):
            rows = getattr(self, name)
            if rows:
                write_rows(data_dir, name, rows, kind="test")
        return data_dir


@dataclass(frozen=True)
class TargetSpec:
    """A simulated model: accuracy, how its confidence relates to being right, speed, price."""

    accuracy: float
    confidence: str = "calibrated"  # calibrated | overconfident | none
    latency_ms: float = 500.0
    cost_usd: float = 0.001
    error_rate: float = 0.0
    spread: float = 1.5  # how much item difficulty moves its accuracy
    subset_shift: dict[str, float] = field(default_factory=dict)  # tag -> logit shift
    replica_of_production: bool = False


def _offset(accuracy: float, spread: float, z: np.ndarray) -> float:
    def f(a: float) -> float:
        return float(np.mean(1 / (1 + np.exp(-(a + spread * z))))) - accuracy

    return float(brentq(f, -20, 20))


def synthetic_lake(
    data_dir: Path,
    n: int,
    targets: dict[str, TargetSpec],
    *,
    eval_set: str = "es",
    seed: int = 0,
    tags: tuple[str, ...] = ("email", "chat"),
    n_unlabelled: int = 0,
) -> dict[str, np.ndarray]:
    """Write a lake with n labelled eval-set items (+ mirrored unlabelled traffic).

    The first target is production. Returns each target's true correctness per labelled
    item (a failed call counts as wrong), for reference checks.
    """
    rng = np.random.default_rng(seed)
    total = n + n_unlabelled
    z = rng.standard_normal(total)
    item_tags = rng.choice(tags, size=total)
    truth = rng.choice(QUEUES, size=total)
    wrong_pick = rng.integers(0, len(QUEUES) - 1, size=(len(targets), total))
    lake = LakeBuilder()
    for i in range(total):
        rid = f"r{i:05d}"
        lake.request(rid, tags=[str(item_tags[i])], session=f"s{i // 2}")
        if i < n:
            lake.item(eval_set, rid, stratum=str(item_tags[i]))
            lake.label(rid, "reference", str(truth[i]))
    outcome: dict[str, np.ndarray] = {}
    first: np.ndarray | None = None
    for t_index, (name, spec) in enumerate(targets.items()):
        a = _offset(spec.accuracy, spec.spread, z[:n])
        shift = np.array([spec.subset_shift.get(str(tg), 0.0) for tg in item_tags])
        p = 1 / (1 + np.exp(-(a + spec.spread * z + shift)))
        correct = rng.random(total) < p
        answers = np.array(
            [
                str(truth[i])
                if correct[i]
                else [q for q in QUEUES if q != truth[i]][wrong_pick[t_index, i]]
                for i in range(total)
            ]
        )
        if spec.replica_of_production and first is not None:
            keep = rng.random(total) >= 0.03
            answers = np.where(keep, first, answers)
        if first is None:
            first = answers
        errors = rng.random(total) < spec.error_rate
        outcome[name] = ((answers == truth) & ~errors)[:n]
        conf = 1 - (1 - p) ** 4 if spec.confidence == "overconfident" else p
        latency = spec.latency_ms * np.exp(0.3 * rng.standard_normal(total))
        for i in range(total):
            lp = (
                None
                if spec.confidence == "none"
                else logprobs_json(str(answers[i]), float(conf[i]))
            )
            lake.response(
                f"r{i:05d}",
                name,
                str(answers[i]),
                latency_ms=float(latency[i]),
                ttft_ms=float(latency[i]) * 0.3,
                cost_usd=spec.cost_usd,
                error="timeout" if errors[i] else None,
                logprobs=lp,
            )
    lake.write(data_dir)
    return outcome
