"""A simulator scenario: which models exist and how each behaves, read from YAML.

A model has an accuracy (overall and per subset of the task), a latency (time to first token
and tokens per second, both log-normal), error and timeout rates, prices, and a calibration
profile relating the confidence it reports to how often it is right. `like: other` copies
another model's settings (and its behaviour, so a replica answers like the original except
where `nondeterminism` makes it draw afresh). The embedded default is `default.yaml`.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from proxy.config import describe_validation_error
from proxy.errors import ConfigError
from shadoweval.simulator.task import QUEUES

# (temperature, bias) of each named profile: logit(reported) = temperature * logit(belief) + bias.
PROFILES: dict[str, tuple[float, float]] = {
    "calibrated": (1.0, 0.0),
    "overconfident": (2.0, 1.0),
    "underconfident": (0.5, -0.3),
}
CHANCE = 1.0 / len(QUEUES)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogNormal(_Model):
    """A log-normal draw given by its median and the sigma of its logarithm."""

    median: float = Field(gt=0)
    sigma: Annotated[float, Field(ge=0, le=3)] = 0.3


class Latency(_Model):
    """How long a model takes: time to first token (ms) and generation speed (tokens/s)."""

    ttft_ms: LogNormal = LogNormal(median=300.0, sigma=0.3)
    tokens_per_s: LogNormal = LogNormal(median=60.0, sigma=0.2)


class Price(_Model):
    """What a model costs, in USD per million tokens."""

    input_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    output_per_mtok: Annotated[float, Field(ge=0)] = 0.0


class Calibration(_Model):
    """How the reported confidence distorts the model's true chance of being right.

    On each item the model has a belief b, its real probability of being right there, drawn
    around its accuracy: logit-normal above chance with standard deviation `resolution`
    (0: every item looks alike and the confidence tells nothing; 3: it separates easy from
    hard items well). It reports logit(c) = temperature * logit(b) + bias.
    """

    profile: Literal["calibrated", "overconfident", "underconfident", "custom"] = "calibrated"
    temperature: Annotated[float, Field(gt=0, le=20)] = 1.0
    bias: Annotated[float, Field(ge=-10, le=10)] = 0.0
    resolution: Annotated[float, Field(ge=0, le=6)] = 1.5

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"profile": data}
        if not isinstance(data, dict):
            return data
        out = dict(data)
        profile = out.get("profile")
        if profile is None:
            explicit = "temperature" in out or "bias" in out
            out["profile"] = "custom" if explicit else "calibrated"
        elif profile in PROFILES:
            temperature, bias = PROFILES[profile]
            out.setdefault("temperature", temperature)
            out.setdefault("bias", bias)
        return out


class ModelSpec(_Model):
    """One simulated model, selected by the request's `model` field."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:/\-]+$")
    role: Literal["production", "candidate", "replica", "replay"] = "candidate"
    description: str = ""
    behaviour: str = ""  # whose answers these are; defaults to `name`
    seed: int = 0
    accuracy: float = Field(gt=CHANCE, lt=1)
    subset_accuracy: dict[str, float] = Field(default_factory=dict)
    nondeterminism: Annotated[float, Field(ge=0, le=1)] = 0.0
    latency: Latency = Field(default_factory=Latency)
    error_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    error_statuses: dict[int, float] = Field(default_factory=lambda: {500: 1.0, 503: 1.0, 429: 1.0})
    timeout_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    price: Price = Price()
    calibration: Calibration = Calibration()

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        for tag, acc in self.subset_accuracy.items():
            if not CHANCE < acc < 1:
                raise ValueError(f"subset_accuracy.{tag}: must be between {CHANCE:.3f} and 1")
        if self.error_rate + self.timeout_rate > 1:
            raise ValueError("error_rate + timeout_rate must not exceed 1")
        for status, weight in self.error_statuses.items():
            if not 400 <= status <= 599 or weight < 0:
                raise ValueError(f"error_statuses.{status}: need a 4xx/5xx status, weight >= 0")
        if self.error_rate > 0 and not sum(self.error_statuses.values()) > 0:
            raise ValueError("error_statuses: at least one status needs a positive weight")
        if not self.behaviour:
            object.__setattr__(self, "behaviour", self.name)
        return self


class TaskSpec(_Model):
    """Which tickets the scenario's models know: the task's seed and size."""

    seed: int = 0
    size: Annotated[int, Field(ge=1, le=200_000)] = 3000


class Scenario(_Model):
    """Every simulated model on one server, and what they share."""

    seed: int = 0
    time_scale: Annotated[float, Field(gt=0, le=100)] = 1.0  # multiplies every simulated delay
    hang_s: Annotated[float, Field(gt=0, le=3600)] = 60.0  # how long a simulated timeout hangs
    shared_difficulty: Annotated[float, Field(ge=0, lt=1)] = (
        0.5  # how much models err on the same tickets
    )
    slo_p95_ms: Annotated[float | None, Field(gt=0)] = (
        None  # the latency target the scenario is built around
    )
    task: TaskSpec = TaskSpec()
    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _resolve_like(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("models"), list):
            data = dict(data, models=resolve_like(data["models"]))
        return data

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        names = [m.name for m in self.models]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"models.{i}.name: duplicate model name {name!r}")
        if sum(m.role == "production" for m in self.models) > 1:
            raise ValueError("models: at most one model may have role 'production'")
        return self

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def by_role(self, role: str) -> list[ModelSpec]:
        return [m for m in self.models if m.role == role]


_OWN_KEYS = ("name", "role", "description", "like", "seed")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "subset_accuracy":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_like(models: list[Any]) -> list[Any]:
    """Expand `like: NAME` entries into full model settings (behaviour included)."""
    raw = {m.get("name"): m for m in models if isinstance(m, dict)}
    done: dict[str, dict[str, Any]] = {}

    def expand(m: dict[str, Any], trail: tuple[str, ...]) -> dict[str, Any]:
        like = m.get("like")
        if like is None:
            return {**m, "behaviour": m.get("behaviour") or m.get("name")}
        if like in trail or like not in raw:
            why = "a cycle" if like in trail else "no such model"
            raise ValueError(f"models.{m.get('name')}.like: {like!r} is {why}")
        base = done.get(like) or expand(raw[like], (*trail, like))
        inherited = {k: v for k, v in base.items() if k not in _OWN_KEYS}
        merged = _merge(inherited, {k: v for k, v in m.items() if k != "like"})
        merged.setdefault("behaviour", base["behaviour"])
        return merged

    out: list[Any] = []
    for m in models:
        if isinstance(m, dict):
            done[m.get("name", "")] = expanded = expand(m, (str(m.get("name")),))
            out.append(expanded)
        else:
            out.append(m)
    return out


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    """Validate a scenario mapping; ConfigError names the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the scenario must be a YAML mapping at the top level")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, source=source, heading="invalid simulator scenario")
        ) from None
    except ValueError as exc:  # raised while expanding `like`
        raise ConfigError(f"invalid simulator scenario\n  {source}: {exc}") from None


def default_scenario_text() -> str:
    return resources.files("shadoweval.simulator").joinpath("default.yaml").read_text("utf-8")


def load_scenario(path: str | Path | None = None, **overrides: Any) -> Scenario:
    """A scenario file, or the embedded default when `path` is None; top-level overrides win."""
    source = "default.yaml" if path is None else str(path)
    try:
        text = default_scenario_text() if path is None else Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read simulator scenario {source}: {exc.strerror or exc}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if isinstance(data, dict):
        data.update(overrides)
    return parse_scenario(data, source)
