"""The `analysis` section of the config: how outputs are scored and how a decision is made.

`proxy/config.py` keeps `Settings.analysis` opaque so the live path never depends on offline
code; this module validates it. Every error names the field as `analysis.x.y`.

```yaml
analysis:
  scorers:                      # first matching rule wins; a rule with no route/tag matches all
    - {route: /v1/chat/completions, tag: billing, kind: json_field, path: queue}
    - {tag: math, kind: numeric, tolerance: 0.01}
    - {kind: regex, pattern: "Answer: (\\w+)", group: 1}
    - {kind: judge, base_url: http://judge/v1, model: judge-1, api_key: ${JUDGE_KEY}}
  confidence: {method: logprobs, mode: first_token}   # or: {method: verbalized, path: confidence}
  slo: {latency_p95_ms: 1500, ttft_p95_ms: 400}
  constraints: {max_error_rate: 0.02, max_cost_per_1k_usd: 5}
  objective: expected_cost      # or accuracy
  cost_matrix:                  # USD per wrong answer; the most specific key wins
    "approve->escalate": 50     # predicted approve, reference escalate
    approve: 20                 # any other wrong answer whose predicted label is approve
    error: 2                    # a failed call (timeout, connect, http, invalid)
    default: 1                  # every other wrong answer
  target_precision: 0.95
  conf_level: 0.95
  min_n: 30
  subsets: [fr, email]          # tags to report per subset (default: every tag, route, stratum)
```
Scorer kinds: exact, normalized, json_field(path), regex(pattern, group), choice(choices),
numeric(tolerance, relative), contains, judge(base_url, model, api_key, prompt).
Without any rule, outputs are compared with `normalized`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from proxy.config import Settings, describe_validation_error
from proxy.errors import ConfigError

ScorerKind = Literal[
    "exact", "normalized", "json_field", "regex", "choice", "numeric", "contains", "judge"
]

DEFAULT_JUDGE_PROMPT = (
    "You grade one answer of an assistant. Decide whether the answer is correct for the "
    "request, using the reference answer when one is given.\n\n"
    "Request:\n{question}\n\nReference answer:\n{reference}\n\nAssistant's answer:\n{output}\n\n"
    'Reply with only a JSON object: {"correct": true} or {"correct": false}.'
)


class FieldValueError(ValueError):
    """A validation error about one named sub-field, so the message can point at it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScorerRule(_Model):
    """One scoring rule: which requests it applies to and how it decides correctness."""

    route: str | None = None  # exact route or glob, e.g. /v1/chat/*
    tag: str | None = None  # the request carries this tag
    kind: ScorerKind = "normalized"
    path: str | None = None  # json_field: dotted path, list indices as numbers (a.0.b)
    pattern: str | None = None  # regex: searched in the output
    group: int | str = 1  # regex: capture group number or name
    choices: str = "ABCDEFGHIJ"  # choice: the allowed option letters
    tolerance: Annotated[float, Field(ge=0)] = 0.0  # numeric: absolute tolerance
    relative: Annotated[float, Field(ge=0)] = (
        0.0  # numeric: extra tolerance as a share of |reference|
    )
    base_url: str | None = None  # judge: an OpenAI-compatible endpoint (…/v1)
    model: str | None = None  # judge: model name
    api_key: str | None = None  # judge: bearer key, optional
    prompt: str = DEFAULT_JUDGE_PROMPT  # judge: template with {question} {reference} {output}
    timeout_s: Annotated[float, Field(gt=0)] = 60.0  # judge: per call
    max_concurrency: Annotated[int, Field(ge=1)] = 4  # judge: parallel calls

    @model_validator(mode="after")
    def _kind_fields(self) -> ScorerRule:
        if self.kind == "json_field" and not self.path:
            raise FieldValueError("path", "required when kind is json_field")
        if self.kind == "regex":
            if not self.pattern:
                raise FieldValueError("pattern", "required when kind is regex")
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise FieldValueError("pattern", f"invalid regex: {exc}") from None
            _check_group(compiled, self.group)
        if self.kind == "judge":
            if not self.base_url or not re.match(r"^https?://[^/\s]+", self.base_url):
                raise FieldValueError("base_url", "an http(s) URL is required when kind is judge")
            if not self.model:
                raise FieldValueError("model", "required when kind is judge")
            for name in ("output",):
                if "{" + name + "}" not in self.prompt:
                    raise FieldValueError("prompt", "must contain the placeholder {output}")
        if self.kind == "choice" and not re.fullmatch(r"[A-Za-z]+", self.choices):
            raise FieldValueError("choices", "must be letters, e.g. ABCD")
        return self

    def matches(self, route: str | None, tags: Sequence[str] | None) -> bool:
        """Whether this rule applies to a request with this route and these tags."""
        if self.route is not None and not fnmatch.fnmatchcase(route or "", self.route):
            return False
        return self.tag is None or self.tag in (tags or ())


def _check_group(compiled: re.Pattern[str], group: int | str) -> None:
    if isinstance(group, int):
        if group < 0 or group > compiled.groups:
            raise FieldValueError("group", f"the pattern has {compiled.groups} group(s)")
    elif group not in compiled.groupindex:
        raise FieldValueError("group", f"the pattern has no group named {group!r}")


class ConfidenceSettings(_Model):
    """Where a per-output confidence comes from; `none` turns calibration figures off."""

    method: Literal["logprobs", "verbalized", "none"] = "none"
    # logprobs: probability of the first answer token (summed over its spelling variants in
    # top_logprobs), or the product of the probabilities of all answer tokens.
    mode: Literal["first_token", "product"] = "first_token"
    path: str | None = None  # verbalized: JSON field of the output holding the confidence
    pattern: str | None = None  # verbalized: regex whose group holds the confidence
    group: int | str = 1

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"method": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _verbalized_source(self) -> ConfidenceSettings:
        if self.method == "verbalized":
            if bool(self.path) == bool(self.pattern):
                raise FieldValueError(
                    "path", "verbalized confidence needs exactly one of path or pattern"
                )
            if self.pattern:
                try:
                    compiled = re.compile(self.pattern)
                except re.error as exc:
                    raise FieldValueError("pattern", f"invalid regex: {exc}") from None
                _check_group(compiled, self.group)
        return self


class SloSettings(_Model):
    """Latency objectives; a candidate whose p95 exceeds one is not deployable."""

    latency_p95_ms: Annotated[float | None, Field(gt=0)] = None
    ttft_p95_ms: Annotated[float | None, Field(gt=0)] = None


class ConstraintSettings(_Model):
    """Hard limits a candidate must meet to be ranked as deployable."""

    max_error_rate: Annotated[float | None, Field(ge=0, le=1)] = None
    max_cost_per_1k_usd: Annotated[float | None, Field(ge=0)] = None


class CostMatrix(_Model):
    """The USD cost of each kind of wrong answer; the most specific entry wins.

    Keys of the YAML mapping: `predicted->reference` (this confusion), `predicted` (any
    wrong answer with this predicted label), `error` (a failed call: no answer at all;
    defaults to `default`) and the required `default`. Labels compare case- and
    space-insensitively. Correct answers cost nothing beyond the call itself.
    """

    default: float = Field(ge=0)
    error: Annotated[float | None, Field(ge=0)] = None
    pairs: dict[str, float] = Field(default_factory=dict)  # "predicted->reference"
    predicted: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_flat(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "pairs" in data or "predicted" in data:
            return data
        out: dict[str, Any] = {"pairs": {}, "predicted": {}}
        for key, value in data.items():
            k = str(key)
            if k in ("default", "error"):
                out[k] = value
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise FieldValueError(k, "must be a non-negative number (USD)")
            if "->" in k:
                pred, _, ref = k.partition("->")
                if not pred.strip() or not ref.strip():
                    raise FieldValueError(k, "a pair is written 'predicted->reference'")
                out["pairs"][f"{label_key(pred)}->{label_key(ref)}"] = float(value)
            else:
                out["predicted"][label_key(k)] = float(value)
        if "default" not in out:
            raise FieldValueError("default", "required: the cost of a wrong answer not listed")
        return out

    def cost(self, predicted: str | None, reference: str | None, failed: bool) -> float:
        """The cost of one wrong answer (callers charge nothing for a correct one)."""
        if failed or predicted is None:
            return self.default if self.error is None else self.error
        p = label_key(predicted)
        if reference is not None:
            pair = self.pairs.get(f"{p}->{label_key(reference)}")
            if pair is not None:
                return pair
        return self.predicted.get(p, self.default)


def label_key(text: str) -> str:
    """How labels are compared in the cost matrix: case- and whitespace-insensitive."""
    return " ".join(str(text).casefold().split())


class AnalysisSettings(_Model):
    """Everything the offline analysis needs beyond the lake itself."""

    scorers: list[ScorerRule] = Field(default_factory=list)
    confidence: ConfidenceSettings = Field(default_factory=ConfidenceSettings)
    slo: SloSettings = Field(default_factory=SloSettings)
    constraints: ConstraintSettings = Field(default_factory=ConstraintSettings)
    objective: Literal["accuracy", "expected_cost"] = "accuracy"
    cost_matrix: CostMatrix | None = None
    target_precision: Annotated[float, Field(gt=0, lt=1)] = 0.95
    conf_level: Annotated[float, Field(ge=0.5, lt=1)] = 0.95
    min_n: Annotated[int, Field(ge=1)] = 30
    subsets: list[str] | None = None
    # When a confidence counts as poorly calibrated: ECE's lower bound above this.
    ece_tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.05
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 10
    recalibration: Literal["platt", "temperature"] = "platt"
    n_boot: Annotated[int, Field(ge=100)] = 2000
    seed: int = 0
    # Agreement with production is computed over at most this many mirrored requests
    # (a uniform sample by request id beyond it; the interval says how sure).
    agreement_max_n: Annotated[int, Field(ge=100)] = 50_000
    # Candidates that are replicas of production (noise baseline), beside `candidates[].replica`.
    replicas: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _objective_needs_costs(self) -> AnalysisSettings:
        if self.objective == "expected_cost" and self.cost_matrix is None:
            raise FieldValueError("cost_matrix", "required when objective is expected_cost")
        return self

    def scorer_for(self, route: str | None, tags: Sequence[str] | None) -> ScorerRule:
        """The first rule that matches; `normalized` when none does."""
        for rule in self.scorers:
            if rule.matches(route, tags):
                return rule
        return FALLBACK_RULE

    @property
    def alpha(self) -> float:
        return 1.0 - self.conf_level


FALLBACK_RULE = ScorerRule(kind="normalized")


def _location(err: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldValueError):
        loc.append(cause.field)
    return ".".join(["analysis", *loc])


def parse_analysis(data: Mapping[str, Any] | None, source: str = "config") -> AnalysisSettings:
    """Validate the raw `analysis` mapping; raise ConfigError naming each bad field."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{source}: analysis: must be a mapping")
    try:
        return AnalysisSettings.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(
                exc, source=source, heading="invalid analysis settings", location=_location
            )
        ) from None


def from_settings(settings: Settings, source: str = "config") -> AnalysisSettings:
    """The analysis settings of a loaded config, with replica candidates added."""
    analysis = parse_analysis(settings.analysis, source)
    replicas = [c.name for c in settings.candidates if c.replica]
    extra = [r for r in replicas if r not in analysis.replicas]
    if extra:
        analysis = analysis.model_copy(update={"replicas": [*analysis.replicas, *extra]})
    return analysis
