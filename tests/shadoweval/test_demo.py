"""`shadoweval demo` end to end: a small real run, then the lake's contents and the report's conclusions.

One run (simulator and `shadoweval serve` as real processes, the openai SDK as the client) is
shared by the tests that inspect it. Latencies run at half speed, and the SLO scales with them,
so the latency conclusions are the default scenario's.
"""

from __future__ import annotations

import io
import json
import shlex
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from proxy.config import RedactionSettings
from proxy.errors import ShadowevalError
from proxy.lake.reader import connect
from proxy.lake.redaction import Redactor
from shadoweval.cli import main
from shadoweval.demo import MARKER, DemoOptions, DemoResult, prepare_out, run_demo
from shadoweval.demo_output import sql_examples
from shadoweval.demo_services import ProxyProcess, free_port, redaction_aware_task
from shadoweval.demo_traffic import plan_calls
from shadoweval.simulator.task import load_task

REQUESTS = 400
EVAL_SIZE = 150
CANDIDATES = ("big", "small", "prod-replica")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, str]:
    out = tmp_path_factory.mktemp("demo") / "run"
    buf = io.StringIO()
    opts = DemoOptions.quick(
        out=out,
        requests=REQUESTS,
        eval_size=EVAL_SIZE,
        concurrency=32,
        time_scale=0.5,
        n_boot=300,
        progress=False,
    )
    result = run_demo(opts, Console(file=buf, width=200))
    return result, buf.getvalue()


def test_everything_lands_under_out(demo: tuple[DemoResult, str]) -> None:
    result, printed = demo
    out = result.out
    for name in (MARKER, "shadoweval.yaml", "simulator.yaml", "labels/simulated.jsonl"):
        assert (out / name).is_file(), name
    assert result.data_dir == out / "data"
    html = result.reports["html"].read_text("utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "# " in result.reports["markdown"].read_text("utf-8")
    report_json = json.loads(result.reports["json"].read_text("utf-8"))
    assert report_json["eval_set"] == "demo"
    # The last lines say what to open and which queries to try.
    tail = printed.strip().splitlines()[-8:]
    assert any(str(result.reports["html"]) in line for line in tail)
    assert sum(line.strip().startswith("shadoweval sql --data") for line in tail) >= 2


def test_the_suggested_queries_run(
    demo: tuple[DemoResult, str], capsys: pytest.CaptureFixture[str]
) -> None:
    result, _ = demo
    for line in sql_examples(result.data_dir):
        argv = shlex.split(line)
        assert argv[:2] == ["shadoweval", "sql"]
        assert main(argv[1:]) == 0, line
        assert "rows)" in capsys.readouterr().out


def test_the_lake_holds_every_request_and_call(demo: tuple[DemoResult, str]) -> None:
    result, _ = demo
    con = connect(result.data_dir)
    try:
        n, mirrored, streamed, sessions, tagged = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE mirrored), count(*) FILTER (WHERE stream), "
            "count(DISTINCT session_id), count(*) FILTER (WHERE len(tags) = 3) FROM requests"
        ).fetchone() or (0, 0, 0, 0, 0)
        # SIGTERM flushed everything: every request the app sent was recorded once.
        assert n == REQUESTS == result.traffic.sent
        assert tagged == REQUESTS and streamed > 0 and sessions > 0
        # Phone tickets are always mirrored, the rest at rate 0.5, as the sampling rules say.
        rates = dict(
            con.execute(
                "SELECT list_contains(tags, 'channel:phone'), list_distinct(list(sample_rate)) "
                "FROM requests GROUP BY 1"
            ).fetchall()
        )
        assert rates == {True: [1.0], False: [0.5]}
        assert 0.3 * REQUESTS < mirrored < 0.9 * REQUESTS
        calls = Counter(
            {
                (t, s): c
                for t, s, c in con.execute(
                    "SELECT target, source, count(*) FROM responses GROUP BY ALL"
                ).fetchall()
            }
        )
        assert calls[("production", "live")] == REQUESTS
        for name in CANDIDATES:  # one row per mirrored request and candidate, failures included
            assert calls[(name, "live")] == mirrored, name
        assert calls[("tuned", "live")] == 0  # replay only
        assert calls[("tuned", "replay")] == EVAL_SIZE == result.replay.done
        evalset = con.execute(
            "SELECT count(*), count(DISTINCT request_id), min(inclusion_prob), max(inclusion_prob), "
            "bool_and(r.mirrored) FROM eval_sets e JOIN requests r USING (request_id) "
            "WHERE eval_set = 'demo'"
        ).fetchone()
        assert evalset is not None
        assert evalset[:2] == (EVAL_SIZE, EVAL_SIZE) and 0 < evalset[2] <= evalset[3] <= 1
        assert evalset[4] is True
        labels = con.execute(
            "SELECT kind, source, labeller, count(*) FROM labels GROUP BY ALL"
        ).fetchall()
        assert labels == [("reference", "simulated", "simulated-labeller", result.labels)]
        # A label for every item the app saw answered or could be traced to its ticket.
        assert result.labels >= EVAL_SIZE - 2
    finally:
        con.close()


def test_the_report_shows_the_scenarios_point(demo: tuple[DemoResult, str]) -> None:
    result, printed = demo
    report = result.report
    big, small, prod = report.target("big"), report.target("small"), report.target("production")

    def check(t: object, metric: str) -> str:
        return next(c.status for c in t.checks if c.metric == metric)  # type: ignore[attr-defined]

    # 'big' is too slow for the SLO and cannot be ranked as deployable.
    assert check(big, "latency_p95_ms") in ("missed", "probably missed")
    assert not big.feasible
    ranked = {r.name: r for r in report.decision.ranking}
    assert not ranked["big"].feasible and any("latency" in w for w in ranked["big"].reasons)
    # ...and overconfident: poorly calibrated, no threshold reaches the target precision.
    assert big.calibration is not None and small.calibration is not None
    assert big.calibration.status == "poorly calibrated"
    assert big.calibration.threshold.threshold is None
    # 'small' is fast, cheap and better calibrated than 'big'.
    assert check(small, "latency_p95_ms") == "met"
    assert small.calibration.status != "poorly calibrated"
    assert small.calibration.raw.ece.value < big.calibration.raw.ece.value
    assert small.cost.per_1k is not None and prod.cost.per_1k is not None
    assert big.cost.per_1k is not None
    assert small.cost.per_1k.value < prod.cost.per_1k.value < big.cost.per_1k.value
    # Production meets the SLO; its replica gives the noise floor.
    assert check(prod, "latency_p95_ms") != "missed"
    assert report.noise_replica == "prod-replica" and report.noise_baseline is not None
    # 'tuned' was only replayed, over the whole eval set.
    tuned = report.target("tuned")
    assert tuned.sources == ("replay",) and tuned.n_labelled >= EVAL_SIZE - 5
    # The estimate of production's accuracy is near its accuracy on all traffic.
    truth = result.traffic.correct / result.traffic.answered
    assert prod.accuracy is not None and abs(prod.accuracy.value - truth) < 0.1
    assert report.decision.recommendation in printed


def test_a_previous_demo_is_replaced_anything_else_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_out(out)
    (out / "data").mkdir()
    prepare_out(out)  # a previous demo's directory: wiped and made again
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["demo", "--out", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not (foreign / MARKER).exists()


async def test_a_proxy_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("production: {base_url: not-a-url}\n")
    proxy = ProxyProcess(config, free_port(), tmp_path / "logs" / "proxy.log")
    with pytest.raises(ShadowevalError, match=r"proxy stopped while starting(.|\n)*base_url"):
        await proxy.start()
    assert await proxy.stop(1.0) is not None


def test_planned_traffic_has_sessions_streams_and_exactly_n_calls() -> None:
    task = load_task()
    units = plan_calls(task, 2000, seed=3)
    calls = [c for u in units for c in u]
    assert len(calls) == 2000
    in_sessions = [c for c in calls if c.session_id is not None]
    assert 0.2 < len(in_sessions) / len(calls) < 0.4
    assert 0.25 < sum(c.stream for c in calls) / len(calls) < 0.35
    for unit in units:
        if len(unit) > 1:  # one customer, one language, distinct tickets
            assert len({c.session_id for c in unit}) == 1 and len({c.user_id for c in unit}) == 1
            assert len({c.ticket.language for c in unit}) == 1
            assert len({c.ticket.ticket_id for c in unit}) == len(unit)
    assert plan_calls(task, 2000, seed=3) == units  # the same seed, the same traffic


def test_the_simulated_models_know_a_ticket_the_lake_redacted() -> None:
    settings = RedactionSettings()
    task = redaction_aware_task(0, 3000, settings)
    redactor = Redactor.from_settings(settings)
    redacted = [(t, redactor.text(t.user_message())) for t in task.tickets[:400]]
    changed = [(t, text) for t, text in redacted if text != t.user_message()]
    assert changed  # the task's e-mail addresses and phone numbers are redacted...
    for ticket, text in changed:
        assert "[REDACTED]" in text
        assert task.lookup(text) is ticket  # ...and the ticket is still found
    assert load_task().lookup(changed[0][1]) is None
