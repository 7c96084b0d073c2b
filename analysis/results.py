"""The typed result of an evaluation: every number the report shows, for notebooks and renderers.

`evaluate()` builds an `EvaluationReport`; `decision.decide()` reads it; the report package
renders it. `to_dict()` turns it into plain JSON-ready data (NaN and infinities become null).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.stats.calibration import Calibration
from analysis.stats.estimate import Estimate
from analysis.stats.pairing import PairedComparison
from analysis.stats.thresholds import ThresholdResult

PRODUCTION = "production"


@dataclass(frozen=True)
class Check:
    """One constraint (latency SLO, error rate, cost) held against its limit, with certainty.

    status: 'met' (the whole interval is within the limit), 'probably met' (the estimate is
    within, the interval crosses it), 'probably missed', 'missed', or 'no data'.
    """

    metric: str  # latency_p95_ms | ttft_p95_ms | error_rate | cost_per_1k_usd
    limit: float
    estimate: Estimate | None
    status: str
    compliance: Estimate | None = None  # share of calls within a latency limit

    @property
    def feasible(self) -> bool:
        """Whether the point estimate keeps the limit (no data does not block)."""
        return self.status in ("met", "probably met", "no data")


@dataclass(frozen=True)
class LatencyFigures:
    """Latency and time to first token of successful calls, all traffic of the target."""

    n: int
    p50: Estimate | None
    p95: Estimate | None
    p99: Estimate | None
    ttft_n: int
    ttft_p50: Estimate | None
    ttft_p95: Estimate | None
    ttft_p99: Estimate | None
    cdf: list[tuple[float, float]]  # (latency ms, share of calls at or below), for plots
    ttft_cdf: list[tuple[float, float]]


@dataclass(frozen=True)
class ReliabilityFigures:
    """Failures over every call that reached the model."""

    calls: int
    unobserved: int  # dropped by shadow bounds or budget: not the model's doing
    error_rate: Estimate | None
    timeout_rate: Estimate | None


@dataclass(frozen=True)
class CostFigures:
    """Spend per 1,000 requests, and with a cost matrix the expected cost of errors too."""

    per_1k: Estimate | None  # call cost, all traffic
    expected_per_1k: Estimate | None  # call + error cost on labelled items (cost matrix)
    expected_diff_per_1k: Estimate | None  # minus production's, on the same items


@dataclass(frozen=True)
class Recalibration:
    """Recalibrated confidence, fitted and scored by cross-validation."""

    method: str
    ece: float
    brier: float
    threshold: ThresholdResult | None


@dataclass(frozen=True)
class CalibrationFigures:
    """How far confidence can be trusted: raw calibration, recalibrated, threshold, curve."""

    n: int
    raw: Calibration
    recalibrated: Recalibration | None
    threshold: ThresholdResult
    risk_coverage: list[tuple[float, float]]  # (coverage, risk), for plots
    status: str  # 'well calibrated' | 'poorly calibrated' | 'uncertain'


@dataclass(frozen=True)
class SubsetFigures:
    """One subset of the traffic (a tag, route or stratum), target against production."""

    dimension: str  # tag | route | stratum
    value: str
    n: int  # labelled items the target and production share in the subset
    accuracy: Estimate | None
    production_accuracy: Estimate | None
    paired: PairedComparison | None
    p_holm: float | None  # Holm-adjusted across the target's subsets (None: too small)
    too_small: bool

    @property
    def name(self) -> str:
        return f"{self.dimension}:{self.value}"


@dataclass(frozen=True)
class TargetFigures:
    """Everything measured for one target (production, a candidate or a replica)."""

    name: str
    role: str  # production | candidate | replica
    sources: tuple[str, ...]
    n_items: int  # eval-set items it answered
    n_labelled: int
    accuracy: Estimate | None
    paired: PairedComparison | None  # against production, on shared labelled items
    reliability: ReliabilityFigures
    latency: LatencyFigures
    cost: CostFigures
    calibration: CalibrationFigures | None
    agreement: Estimate | None  # with production's answers on all traffic: not accuracy
    agreement_sampled: bool
    subsets: list[SubsetFigures]
    checks: list[Check]

    @property
    def feasible(self) -> bool:
        return all(c.feasible for c in self.checks)


@dataclass(frozen=True)
class Ranked:
    """A target's place in the ranking under the constraints and the objective."""

    rank: int
    name: str
    feasible: bool
    objective: Estimate | None
    reasons: list[str]  # why it is not feasible, when it is not


@dataclass(frozen=True)
class Decision:
    """The ranking, a plain sentence per candidate, and what to do next."""

    objective: str
    ranking: list[Ranked]
    sentences: dict[str, str]
    recommendation: str
    open_questions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EvaluationReport:
    """The whole evaluation of one eval set."""

    data_dir: str
    eval_set: str | None
    generated_at: str
    conf_level: float
    n_items: int
    n_labelled: int
    targets: list[TargetFigures]
    noise_baseline: Estimate | None  # production's disagreement with its replica
    noise_replica: str | None
    decision: Decision
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def target(self, name: str) -> TargetFigures:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Every number as plain JSON-ready data."""
        out: dict[str, Any] = jsonable(self)
        return out


def jsonable(value: Any) -> Any:
    """Dataclasses, numpy values and tuples as plain data; NaN and infinities as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name in ("feasible", "name"):
            attr = getattr(type(value), name, None)
            if isinstance(attr, property):
                out[name] = jsonable(getattr(value, name))
        return out
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
