"""The proxy's configuration: YAML, `${VAR}` interpolation, validated by pydantic.

The stable keys (DESIGN.md) are `server.host`, `server.port`, `production.base_url`,
`production.api_key`, `candidates[].name|base_url|model|api_key`, `sampling.rate`,
`storage.data_dir`, `admin.token`. Everything else has a default. The `analysis`
section is opaque here: `analysis/settings.py` validates it, so the live path never
depends on offline code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from proxy.errors import ConfigError

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    body_limit_bytes: int = Field(16 * 1024 * 1024, gt=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    workers: int = Field(1, ge=1, le=64)
    access_log: bool = True
    # A client that takes none of its answer for this long is disconnected, and production's
    # answer is let go (proxy/stall.py). A client that reads slowly is not.
    client_write_timeout_s: float = Field(60.0, gt=0)
    # Serve /v1 requests with the proxy's own HTTP/1.1 front (proxy/front.py); false serves
    # every request through aiohttp's server, as before the front existed.
    lean_front: bool = True


class ProductionSettings(_Model):
    base_url: str
    api_key: str | None = None
    connect_timeout_s: float = Field(10.0, gt=0)
    total_timeout_s: float = Field(600.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    pool_size: int = Field(1000, ge=1)
    price_input_per_mtok: float = Field(0.0, ge=0)
    price_output_per_mtok: float = Field(0.0, ge=0)

    _url = field_validator("base_url")(_check_url)

    @field_validator("api_key")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None


class CandidateSettings(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    base_url: str
    model: str = Field(min_length=1)
    api_key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(60.0, gt=0)
    max_concurrency: int = Field(8, ge=1)
    max_queue: int = Field(100, ge=0)
    rate_per_s: float | None = Field(None, gt=0)
    daily_budget_usd: float | None = Field(None, ge=0)
    price_input_per_mtok: float = Field(0.0, ge=0)
    price_output_per_mtok: float = Field(0.0, ge=0)
    enabled: bool = True
    stream_include_usage: bool = True
    # A replica of the production model: the analysis uses it as a noise baseline.
    replica: bool = False

    _url = field_validator("base_url")(_check_url)

    @field_validator("name")
    @classmethod
    def _not_production(cls, v: str) -> str:
        if v == "production":
            raise ValueError("'production' is reserved for the production target")
        return v


class SamplingRule(_Model):
    """First matching rule sets the rate; unmatched requests use `sampling.rate`."""

    route: str | None = None
    model: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    rate: float = Field(ge=0.0, le=1.0)


class TagField(_Model):
    """Take a tag from a dotted path of the JSON body, e.g. `metadata.task`."""

    path: str = Field(min_length=1)
    prefix: str = ""


class SamplingSettings(_Model):
    rate: float = Field(0.0, ge=0.0, le=1.0)
    rules: list[SamplingRule] = Field(default_factory=list)
    sticky_header: str | None = None
    skip_header: str = "x-shadow-skip"
    exclude_routes: list[str] = Field(default_factory=list)
    tags_header: str = "x-shadow-tags"
    tag_fields: list[TagField] = Field(default_factory=list)
    session_header: str | None = "x-session-id"
    seed: str = "shadoweval"


class RedactionSettings(_Model):
    builtin: bool = True
    patterns: list[str] = Field(default_factory=list)
    replacement: str = "[REDACTED]"

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"invalid regex {p!r}: {exc}") from exc
        return v


class StorageSettings(_Model):
    data_dir: Path = Path("./shadoweval-data")
    flush_interval_s: float = Field(2.0, gt=0)
    flush_rows: int = Field(5000, ge=1)
    buffer_max_rows: int = Field(200_000, ge=1)
    store_content: bool = True
    omit_header: str = "x-shadow-omit"
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)
    compact_after_s: float = Field(3600.0, ge=0)
    retention_days: int | None = Field(None, ge=1)
    writer_id: str | None = None
    # Convert and write rows in a separate lake-writer process (proxy/lake/writer_process.py)
    # instead of a thread of the serving process: no GIL shared with the event loop.
    writer_process: bool = True


class AdminSettings(_Model):
    token: str | None = None
    labels_max_bytes: int = Field(8 * 1024 * 1024, gt=0)


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    log_content: bool = False


class Settings(_Model):
    server: ServerSettings = Field(default_factory=ServerSettings)
    production: ProductionSettings
    candidates: list[CandidateSettings] = Field(default_factory=list)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    # Validated by analysis/settings.py; opaque to the live path.
    analysis: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_candidates(self) -> Settings:
        seen: set[str] = set()
        for i, c in enumerate(self.candidates):
            if c.name in seen:
                raise ValueError(f"candidates.{i}.name: duplicate candidate name {c.name!r}")
            seen.add(c.name)
        return self

    def candidate(self, name: str) -> CandidateSettings:
        for c in self.candidates:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.candidates) or "none"
        raise ConfigError(f"unknown candidate {name!r} (configured: {known})")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Replace `${VAR}` and `${VAR:-default}`; an unset VAR without default is an error."""
    env = dict(os.environ) if env is None else env
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    out = _ENV_PATTERN.sub(sub, text)
    if missing:
        raise ConfigError(f"environment variable(s) not set: {', '.join(sorted(set(missing)))}")
    return out


def describe_validation_error(
    exc: ValidationError,
    *,
    source: str,
    heading: str,
    location: Callable[[Mapping[str, Any]], str] | None = None,
) -> str:
    """One line per problem, each naming its field (`location` maps an error to its name)."""
    lines = []
    for err in exc.errors():
        where = location(err) if location else ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if msg.startswith(where + ":"):
            lines.append(f"{source}: {msg}")
        else:
            lines.append(f"{source}: {where}: {msg}")
    return f"{heading}\n  " + "\n  ".join(lines)


def parse_settings(data: Any, source: str = "config") -> Settings:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping at the top level")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, source=source, heading="invalid config")
        ) from None


def _interpolate_tree(node: Any, env: dict[str, str], where: str, missing: list[str]) -> Any:
    """Interpolate every string value of parsed YAML; comments are never read."""
    if isinstance(node, dict):
        return {
            k: _interpolate_tree(v, env, f"{where}.{k}" if where else str(k), missing)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate_tree(v, env, f"{where}.{i}", missing) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        try:
            return interpolate(node, env)
        except ConfigError as exc:
            missing.append(f"{where}: {exc}")
    return node


def load_settings(path: str | Path, env: dict[str, str] | None = None) -> Settings:
    """Read, interpolate and validate a config file; raise ConfigError naming the field.

    `${VAR}` references are replaced in the parsed values (not the raw text), so a
    reference inside a YAML comment is ignored and a value cannot inject YAML structure.
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    missing: list[str] = []
    data = _interpolate_tree(data, dict(os.environ) if env is None else env, "", missing)
    if missing:
        raise ConfigError(f"{p}: " + "; ".join(missing))
    return parse_settings(data, str(p))
