"""The demo's configuration files: the simulator's scenario and the proxy's YAML config.

Both are written into the demo directory and used from there, so a user can read exactly
what ran, start `shadoweval serve --config` or `shadoweval report --config` on them again,
and copy the proxy config as a starting point for a real deployment. Every value comes
from the scenario: the candidates' prices, the SLO the scenario is built around.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from proxy.config import RedactionSettings, Settings, load_settings
from shadoweval.simulator.scenario import Scenario, default_scenario_text, parse_scenario

EVAL_SET = "demo"
REPLAY_CANDIDATE = "tuned"
SHUTDOWN_GRACE_S = 10.0

# USD per wrong answer: a misrouted ticket costs an agent's time to pass it on; a security
# ticket sent anywhere else leaves a hacked account open for longer; a failed call means a
# person triages the ticket by hand.
COST_MATRIX: dict[str, float] = {
    **{f"{q}->security": 25.0 for q in ("billing", "technical", "account", "shipping", "refunds")},
    "refunds->billing": 2.0,
    "billing->refunds": 2.0,
    "error": 1.0,
    "default": 4.0,
}


def redaction_settings() -> RedactionSettings:
    """What the demo's lake redacts (the built-in patterns): the simulator must know it too."""
    return RedactionSettings(builtin=True)


QUEUE_PATTERN = r"(?i)\b(billing|technical|account|shipping|refunds|security)\b"


def call_timeout_s(scenario: Scenario) -> float:
    """How long a model call may take: simulated hangs last a minute, real answers far less."""
    return max(2.0, 5.0 * scenario.time_scale)


def demo_scenario(time_scale: float = 1.0, seed: int = 0) -> Scenario:
    """The embedded default scenario, sped up or slowed down by `time_scale`."""
    data: dict[str, Any] = yaml.safe_load(default_scenario_text())
    data.update(time_scale=time_scale, seed=seed)
    return parse_scenario(data, "default.yaml")


def write_scenario(path: Path, scenario: Scenario) -> None:
    """The scenario the simulator serves, as YAML (configs/simulator.yaml explains each knob)."""
    header = (
        "# The simulated models of this demo: the embedded default scenario (annotated in\n"
        "# configs/simulator.yaml). Serve it again with `shadoweval simulate --config FILE`.\n"
    )
    data = scenario.model_dump(mode="json", exclude_defaults=False)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _j(value: Any) -> str:
    """A value as YAML flow syntax (JSON is valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


def _candidate(
    name: str, base_url: str, scenario: Scenario, *, replica: bool = False, enabled: bool = True
) -> str:
    spec = scenario.model(name)
    lines = [
        f"  - name: {name}",
        f"    # {spec.description}" if spec.description else "",
        f"    base_url: {base_url}",
        f"    model: {name}",
        f"    timeout_s: {call_timeout_s(scenario):g}",
        "    max_concurrency: 128                 # shadow calls in flight at once",
        "    max_queue: 1000                      # waiting beyond this are dropped and counted",
        f"    price_input_per_mtok: {spec.price.input_per_mtok:g}",
        f"    price_output_per_mtok: {spec.price.output_per_mtok:g}",
        "    extra_body: {logprobs: true, top_logprobs: 5}   # confidence for calibration",
    ]
    if replica:
        lines.append(
            "    replica: true                        # production's twin: the noise floor"
        )
    if not enabled:
        lines.append("    enabled: false                       # sees no live traffic: replayed")
    return "\n".join(line for line in lines if line)


def proxy_config_text(
    *,
    port: int,
    simulator_url: str,
    data_dir: Path,
    scenario: Scenario,
    n_boot: int,
) -> str:
    """The proxy's YAML config for the demo, commented for a reader who copies it."""
    prod = scenario.by_role("production")[0]
    slo = (scenario.slo_p95_ms or 1500.0) * scenario.time_scale
    candidates = "\n".join(
        [
            _candidate("big", simulator_url, scenario),
            _candidate("small", simulator_url, scenario),
            _candidate("prod-replica", simulator_url, scenario, replica=True),
            _candidate(REPLAY_CANDIDATE, simulator_url, scenario, enabled=False),
        ]
    )
    sim_port = simulator_url.rsplit(":", 1)[-1].split("/", 1)[0]
    here = data_dir.parent
    return f"""\
# shadoweval demo: the proxy in front of the simulated production model 'prod', shadowing
# two candidates and a replica of production; 'tuned' is only replayed on the eval set.
# The report again, with other analysis settings:
#   shadoweval report --config {here / "shadoweval.yaml"}
# The proxy again (the simulated models first):
#   shadoweval simulate --config {here / "simulator.yaml"} --port {sim_port}
#   shadoweval serve --config {here / "shadoweval.yaml"}

server:
  host: 127.0.0.1
  port: {port}
  shutdown_grace_s: {SHUTDOWN_GRACE_S:g}                   # SIGTERM: finish, drain shadow calls, flush
  access_log: true

production:
  base_url: {simulator_url}
  api_key: ""                            # empty: the app's own Authorization goes to production
  connect_timeout_s: 2
  read_timeout_s: {call_timeout_s(scenario):g}
  total_timeout_s: {2 * call_timeout_s(scenario):g}
  price_input_per_mtok: {prod.price.input_per_mtok:g}
  price_output_per_mtok: {prod.price.output_per_mtok:g}

candidates:
{candidates}

sampling:
  rate: 0.5                              # mirror half of the traffic...
  rules:
    - {{tags: [channel:phone], rate: 1.0}}  # ...and every phone ticket: the hard, rarer subset
  sticky_header: x-user-id               # by customer: a session is mirrored whole or not at all
  tags_header: x-shadow-tags             # lang:, channel:, length: tags from the app
  session_header: x-session-id
  seed: shadoweval-demo

storage:
  data_dir: {_j(str(data_dir))}
  flush_interval_s: 1
  redaction: {{builtin: true}}             # e-mail addresses and phone numbers never reach the lake

logging:
  level: info
  format: json

analysis:
  scorers:
    - {{kind: regex, pattern: {_j(QUEUE_PATTERN)}, group: 1}}   # the queue the answer names
  confidence: {{method: logprobs, mode: first_token}}
  slo: {{latency_p95_ms: {slo:g}}}
  constraints: {{max_error_rate: 0.02}}
  objective: expected_cost
  cost_matrix: {_j(COST_MATRIX)}
  target_precision: 0.95
  conf_level: 0.95
  n_boot: {n_boot}
"""


def write_proxy_config(path: Path, **kwargs: Any) -> Settings:
    """Write the config and load it back the way `serve` will (so a mistake shows here)."""
    from analysis.settings import from_settings

    path.write_text(proxy_config_text(**kwargs), encoding="utf-8")
    settings = load_settings(path)
    from_settings(settings, str(path))
    return settings
