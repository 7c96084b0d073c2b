"""`shadoweval demo`: the whole loop on simulated models, in about a minute, no keys, no network.

1. start the simulated models and the proxy (`shadoweval serve`, a real process) on free ports;
2. send a few thousand requests through the proxy with the `openai` SDK, as an app would;
3. stop the proxy with SIGTERM, so every record is flushed to the lake;
4. build an eval set of about 300 mirrored requests, stratified by the app's tags;
5. label it from the simulator's ground truth, with a small labeller error rate;
6. replay 'tuned', a candidate that saw no live traffic, over the eval set;
7. score, analyse and decide: the report as HTML, Markdown and JSON, the decision printed.

Everything lives under `--out`: the configs, the lake, the label file, the logs, the reports.
The default scenario shows what the product is for: 'big' is more accurate but overconfident
and too slow for the SLO; 'small' is a little less accurate but calibrated and cheap, so a
confidence threshold can be trusted; production sits between them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from analysis.evalset import BuildOptions, build_eval_set
from analysis.labels import import_labels
from analysis.replay import Replay, ReplaySummary
from analysis.report import render
from analysis.results import EvaluationReport
from proxy.config import Settings
from proxy.errors import InputError, ShadowevalError
from proxy.lake.reader import connect
from shadoweval import demo_config as cfg
from shadoweval.demo_output import Steps, print_summary, recorded_table
from shadoweval.demo_services import ProxyProcess, SimulatorProcess, free_port
from shadoweval.demo_traffic import TrafficSummary, plan_calls, send_traffic
from shadoweval.simulator.scenario import Scenario
from shadoweval.simulator.task import Task, load_task, simulated_label

MARKER = ".shadoweval-demo"  # marks a directory the demo may wipe and make again
MIN_REQUESTS = 300
MIN_EVAL_SIZE = 100  # the eval set has 36 strata of at least 2 items each
LABELLER = "simulated-labeller"
REPORTS = {"html": "report.html", "markdown": "report.md", "json": "report.json"}


@dataclass(frozen=True)
class DemoOptions:
    """What to run; `quick()` trades precision for time."""

    out: Path = Path("shadoweval-demo")
    requests: int = 2500
    concurrency: int = 64
    eval_size: int = 300
    time_scale: float = 1.0  # simulated latencies (and the SLO) are multiplied by this
    seed: int = 0
    labeller_error_rate: float = 0.005  # one label in 200 is wrong
    n_boot: int = 2000
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> DemoOptions:
        """Fewer requests, a smaller eval set and fewer bootstrap resamples."""
        return cls(**{"requests": 600, "eval_size": 200, "n_boot": 500, **overrides})


@dataclass
class DemoResult:
    """Where everything went and what it showed."""

    out: Path
    data_dir: Path
    config_path: Path
    reports: dict[str, Path]
    traffic: TrafficSummary
    replay: ReplaySummary
    labels: int
    report: EvaluationReport
    timings: dict[str, float] = field(default_factory=dict)


def prepare_out(out: Path) -> None:
    """An empty directory for the demo: a previous demo's is wiped, anything else refused."""
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out} is a file; give a directory")
        if (out / MARKER).is_file():
            shutil.rmtree(out)
        elif any(out.iterdir()):
            raise InputError(
                f"--out {out} exists and is not a previous demo's directory "
                f"(no {MARKER} file in it); choose another --out or remove it"
            )
    out.mkdir(parents=True, exist_ok=True)
    stamp = {"created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (out / MARKER).write_text(json.dumps(stamp) + "\n", encoding="utf-8")


def write_labels(
    data_dir: Path, path: Path, tickets: dict[str, Any], task: Task, error_rate: float, seed: int
) -> int:
    """A reference label per eval-set item from the ground truth (with labeller mistakes)."""
    con = connect(data_dir)
    try:
        items = con.execute(
            "SELECT e.request_id, any_value(r.body) FROM eval_sets e "
            "LEFT JOIN requests r USING (request_id) WHERE e.eval_set = $name "
            "GROUP BY e.request_id ORDER BY e.request_id",
            {"name": cfg.EVAL_SET},
        ).fetchall()
    finally:
        con.close()
    lines = []
    for request_id, body in items:
        ticket = tickets.get(request_id)
        if ticket is None and body is not None:  # the app never saw its id (e.g. a timeout)
            ticket = task.find(json.loads(body))
        if ticket is None:
            continue
        value = simulated_label(ticket.text, error_rate, seed, task)
        line = {"request_id": request_id, "kind": "reference", "value": value}
        line.update(labeller=LABELLER, source="simulated")
        lines.append(json.dumps(line, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return import_labels(path, data_dir) if lines else 0


def _build_eval_set(data_dir: Path, opts: DemoOptions) -> str:
    """A stratified sample of the distinct mirrored requests (all of them if fewer)."""
    con = connect(data_dir)
    try:
        row = con.execute(
            "SELECT count(DISTINCT prompt_hash) FROM requests WHERE mirrored AND body IS NOT NULL"
        ).fetchone()
    finally:
        con.close()
    frame = int(row[0]) if row else 0
    opts_ = BuildOptions(
        name=cfg.EVAL_SET,
        size=min(opts.eval_size, frame),
        min_per_stratum=2,
        strata="tags",
        only_mirrored=True,
        seed=opts.seed,
    )
    sel = build_eval_set(data_dir, opts_).selection
    return (
        f"  {len(sel.request_ids)} of {sum(sel.population.values()):,} distinct mirrored requests "
        f"in {len(sel.population)} strata (language × channel × length); inclusion "
        f"probabilities {min(sel.inclusion_prob):.3f}-{max(sel.inclusion_prob):.3f}"
    )


async def _start(
    out: Path, scenario: Scenario, n_boot: int
) -> tuple[SimulatorProcess, ProxyProcess, Settings]:
    """The simulator, then the proxy configured in front of it (the caller stops both)."""
    cfg.write_scenario(out / "simulator.yaml", scenario)
    simulator = SimulatorProcess(
        out / "simulator.yaml", cfg.redaction_settings(), out / "logs" / "simulator.log"
    )
    await simulator.start()
    port = free_port()
    settings = cfg.write_proxy_config(
        out / "shadoweval.yaml",
        port=port,
        simulator_url=simulator.base_url,
        data_dir=out / "data",
        scenario=scenario,
        n_boot=n_boot,
    )
    return (
        simulator,
        ProxyProcess(out / "shadoweval.yaml", port, out / "logs" / "proxy.log"),
        settings,
    )


async def _live(
    opts: DemoOptions, out: Path, scenario: Scenario, task: Task, console: Console, steps: Steps
) -> tuple[Settings, TrafficSummary, int, ReplaySummary]:
    """Everything that needs the running models: traffic, the lake, labels, replay."""
    data_dir = out / "data"
    steps.start("start", "Starting the simulated models and the proxy (shadoweval serve)")
    simulator, proxy, settings = await _start(out, scenario, opts.n_boot)
    running: ProxyProcess | None = proxy
    try:
        await proxy.start()
        console.print(
            f"  simulated models  {simulator.base_url}  (prod, big, small, prod-replica, tuned)"
        )
        console.print(
            f"  proxy             {proxy.url}/v1 → production 'prod'; shadows big, small, prod-replica"
        )

        steps.start("traffic", f"Sending {opts.requests:,} requests through the proxy (openai SDK)")
        traffic = await send_traffic(
            f"{proxy.url}/v1",
            plan_calls(task, opts.requests, seed=opts.seed),
            model=scenario.by_role("production")[0].name,
            concurrency=opts.concurrency,
            timeout_s=4 * cfg.call_timeout_s(scenario),
            console=console,
            progress=opts.progress,
        )
        console.print(
            f"  {traffic.sent:,} requests in {traffic.elapsed_s:.1f} s ({traffic.rate_per_s:,.0f}/s): "
            f"{traffic.streamed:,} streamed, {traffic.in_sessions:,} in {traffic.sessions:,} "
            f"sessions, {traffic.failed} failed"
        )

        if traffic.answered < traffic.sent / 2:
            raise ShadowevalError(
                f"only {traffic.answered} of {traffic.sent} requests were answered; "
                f"see {proxy.log_path} and {simulator.log_path}"
            )

        steps.start("flush", "Stopping the proxy (SIGTERM: drain shadow calls, flush the recorder)")
        running = None
        code = await proxy.stop(cfg.SHUTDOWN_GRACE_S)
        if code != 0:
            console.print(f"  [yellow]the proxy exited with {code}; see {proxy.log_path}")
        console.print(recorded_table(data_dir))

        steps.start("evalset", f"Building eval set '{cfg.EVAL_SET}' from the mirrored requests")
        console.print(_build_eval_set(data_dir, opts))

        steps.start("labels", "Labelling it from the simulator's ground truth (source = simulated)")
        labels_path = out / "labels" / "simulated.jsonl"
        labels = write_labels(
            data_dir, labels_path, traffic.tickets, task, opts.labeller_error_rate, opts.seed
        )
        console.print(
            f"  {labels} reference labels ({100 * opts.labeller_error_rate:g}% labeller mistakes), "
            f"imported from {labels_path}"
        )

        steps.start(
            "replay", f"Replaying '{cfg.REPLAY_CANDIDATE}' (no live traffic) over the eval set"
        )
        replay = await Replay(
            settings, cfg.EVAL_SET, cfg.REPLAY_CANDIDATE, concurrency=32, progress=opts.progress
        ).run()
        console.print(f"  {replay.done} calls, {replay.failed} failed")
        if replay.failed > replay.done / 2:
            raise ShadowevalError(f"most replay calls failed; see {simulator.log_path}")
    finally:
        if running is not None:
            await running.stop(cfg.SHUTDOWN_GRACE_S)
        await simulator.stop()
    return settings, traffic, labels, replay


def run_demo(opts: DemoOptions, console: Console | None = None) -> DemoResult:
    """Run the whole demo; returns where everything went and the evaluation report."""
    from analysis.evaluate import evaluate
    from proxy.server import loop_factory

    console = console or Console()
    if opts.requests < MIN_REQUESTS:
        raise InputError(f"--requests must be at least {MIN_REQUESTS}")
    if opts.eval_size < MIN_EVAL_SIZE:
        raise InputError(f"--eval-size must be at least {MIN_EVAL_SIZE}")
    started = time.perf_counter()
    out = opts.out.resolve()
    prepare_out(out)
    scenario = cfg.demo_scenario(opts.time_scale, opts.seed)
    task = load_task(scenario.task.seed, scenario.task.size)
    steps = Steps(console, 7)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        settings, traffic, labels, replay = runner.run(
            _live(opts, out, scenario, task, console, steps)
        )

    steps.start("report", "Scoring, analysing and deciding")
    report = evaluate(out / "data", settings, cfg.EVAL_SET)
    reports = {fmt: out / name for fmt, name in REPORTS.items()}
    for fmt, path in reports.items():
        path.write_text(render(report, fmt), encoding="utf-8")
    steps.done()
    result = DemoResult(
        out,
        out / "data",
        out / "shadoweval.yaml",
        reports,
        traffic,
        replay,
        labels,
        report,
        steps.timings,
    )
    elapsed = time.perf_counter() - started
    print_summary(console, report, traffic, reports, result.data_dir, steps.timings, elapsed)
    return result
