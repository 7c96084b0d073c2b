"""The LLM judge against a fake OpenAI-compatible judge on loopback; verdicts become labels."""

import json
import math

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from analysis.comparisons import build_comparisons, open_lake
from analysis.judge import judge_pending, parse_judge_reply, pending_tasks, request_text
from analysis.settings import parse_analysis
from tests.analysis.lakefix import LakeBuilder


class FakeJudge:
    """Says an answer is correct when it mentions 'billing'; answers 500 for 'explode'."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append({"body": body, "auth": request.headers.get("Authorization")})
        prompt = body["messages"][0]["content"]
        answer = prompt.split("Assistant's answer:\n", 1)[1].split("\n\n", 1)[0]
        if "explode" in answer:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        verdict = "billing" in answer.lower()
        content = "After thinking: " + json.dumps({"correct": verdict})
        return web.json_response(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        )


@pytest.fixture
async def judge_server():
    fake = FakeJudge()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield fake, f"http://127.0.0.1:{server.port}/v1"
    await server.close()


def lake_for_judging(path):
    b = LakeBuilder()
    for i in range(3):
        b.request(f"r{i}", text=f"ticket {i}: I was charged twice")
        b.item("es", f"r{i}")
    b.label("r0", "reference", "billing")
    b.response("r0", "production", "Billing")
    b.response("r0", "cand", "billing")  # identical after normalisation: judged once
    b.response("r1", "production", "refund")
    b.response("r1", "cand", "explode")
    b.response("r2", "production", "billing")
    b.response("r2", "cand", "shipping")
    b.label("r2", "verdict", True, target="cand")  # a human already decided: not sent
    return b.write(path)


async def test_pending_outputs_are_judged_once_and_stored_as_labels(tmp_path, judge_server):
    fake, url = judge_server
    data = lake_for_judging(tmp_path)
    settings = parse_analysis(
        {"scorers": [{"kind": "judge", "base_url": url, "model": "judge-1", "api_key": "k1"}]}
    )
    con = open_lake(data)
    table = build_comparisons(con, settings, "es")
    tasks = pending_tasks(table)
    assert sorted((t.request_id, t.target) for t in tasks) == [
        ("r0", "cand"),
        ("r1", "cand"),
        ("r1", "production"),
        ("r2", "production"),
    ]
    summary = await judge_pending(data, settings, table, con)
    assert (summary.pending, summary.judged, summary.failed) == (4, 3, 1)
    assert "HTTP 500" in summary.errors[0]
    assert len(fake.calls) == 4 and {c["auth"] for c in fake.calls} == {"Bearer k1"}
    first = fake.calls[0]["body"]
    assert first["model"] == "judge-1" and first["temperature"] == 0
    prompts = " ".join(c["body"]["messages"][0]["content"] for c in fake.calls)
    assert "user: ticket 0: I was charged twice" in prompts and "(none given)" in prompts

    labels = con.execute(
        "SELECT request_id, target, kind, source, labeller, value FROM labels "
        "WHERE source = 'judge' ORDER BY 1, 2"
    ).fetchall()
    assert len(labels) == 3
    assert all(r[2] == "verdict" and r[4] == "judge:judge-1" for r in labels)

    table = build_comparisons(open_lake(data), settings, "es")
    got = {
        (r, t): (c, o)
        for r, t, c, o in zip(
            table.request_id, table.target, table.correct, table.origin, strict=True
        )
    }
    r0 = {got[("r0", "production")][1], got[("r0", "cand")][1]}
    assert r0 == {"verdict", "inherited"}
    assert got[("r0", "production")][0] == got[("r0", "cand")][0] == 1.0
    assert got[("r1", "production")] == (0.0, "verdict")
    assert math.isnan(got[("r1", "cand")][0])  # the judge failed: still unknown
    assert got[("r2", "cand")] == (1.0, "verdict")  # the human verdict stands

    # A second pass only retries what failed.
    fake.calls.clear()
    summary = await judge_pending(data, settings, table, open_lake(data))
    assert summary.pending == 1 and len(fake.calls) == 1


def test_non_judge_rules_have_nothing_pending(tmp_path):
    data = lake_for_judging(tmp_path)
    table = build_comparisons(open_lake(data), parse_analysis({}), "es")
    assert pending_tasks(table) == []


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"correct": true}', 1.0),
        ('```json\n{"correct": false}\n```', 0.0),
        ('Reasoning... {"score": 0.8}', 0.8),
        ("INCORRECT. The queue is refund.", 0.0),
        ("Correct.", 1.0),
        ("I cannot tell", math.nan),
    ],
)
def test_parse_judge_reply(reply, expected):
    got = parse_judge_reply(reply)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_request_text_renders_messages_prompts_and_parts():
    body = {
        "messages": [
            {"role": "system", "content": "Route tickets."},
            {"role": "user", "content": [{"type": "text", "text": "refund please"}]},
        ]
    }
    assert request_text(json.dumps(body)) == "system: Route tickets.\nuser: refund please"
    assert request_text(json.dumps({"prompt": "2+2="})) == "2+2="
    assert request_text("not json") == "not json"
    assert request_text(None) == ""


def test_report_command_judges_pending_outputs_first(tmp_path, capsys):
    """`shadoweval report` calls the judge before scoring (judge on its own loop in a thread)."""
    import asyncio
    import threading

    from shadoweval.cli import main

    fake = FakeJudge()
    ready = threading.Event()
    state: dict = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", fake.handle)
        server = TestServer(app, host="127.0.0.1")
        loop.run_until_complete(server.start_server())
        state.update(loop=loop, server=server, port=server.port)
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        data = lake_for_judging(tmp_path / "lake")
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(
            'production: {base_url: "http://127.0.0.1:9/v1"}\n'
            f"storage: {{data_dir: {data}}}\n"
            "analysis:\n  scorers:\n"
            f"    - {{kind: judge, base_url: 'http://127.0.0.1:{state['port']}/v1', model: j}}\n"
        )
        assert main(["report", "--config", str(cfg), "--format", "json", "--no-judge"]) == 0
        assert fake.calls == []
        before = json.loads(capsys.readouterr().out)
        assert before["n_labelled"] == 1  # only the human verdict on r2
        assert main(["report", "--config", str(cfg), "--format", "json"]) == 0
        out = capsys.readouterr()
        assert "judged 3, failed 1" in out.err and len(fake.calls) == 4
        after = json.loads(out.out)
        assert after["n_labelled"] == 3
    finally:
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        thread.join(10)
