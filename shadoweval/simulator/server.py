"""The simulated models behind one OpenAI-compatible HTTP server.

`POST /v1/chat/completions` (streaming or not, with `logprobs`/`top_logprobs` when asked and
a usage chunk when `stream_options.include_usage`), `GET /v1/models`; the `model` field picks
the model; `GET /sim/stats` counts calls, errors and timeouts per model. Injected errors
answer with OpenAI error JSON; injected timeouts hang for the scenario's `hang_s` (released
at shutdown). `start_simulator` runs it inside the caller's event loop on a free port;
`SimulatorThread` runs it beside synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import error_body
from shadoweval.simulator.models import CallPlan, SimModel, count_tokens
from shadoweval.simulator.scenario import Scenario, load_scenario
from shadoweval.simulator.task import Task, load_task
from shadoweval.simulator.wire import (
    ChunkEncoder,
    Reply,
    bad_request,
    completion_body,
    model_not_found,
    simulated_error,
)


class Simulator:
    """Every model of a scenario, their shared task, and counts of what they did."""

    def __init__(self, scenario: Scenario, task: Task | None = None) -> None:
        self.scenario = scenario
        self.task = task or load_task(scenario.task.seed, scenario.task.size)
        self.models = {m.name: SimModel(m, scenario, self.task) for m in scenario.models}
        self.stats: dict[str, Counter[str]] = {name: Counter() for name in self.models}
        self.closing = asyncio.Event()
        self._ids = 0
        self._prefix = secrets.token_hex(4)

    def next_id(self) -> str:
        """A completion id unique within this server (and, by its prefix, across runs)."""
        self._ids += 1
        return f"chatcmpl-{self._prefix}{self._ids:08x}"


SIMULATOR = web.AppKey("simulator", Simulator)


@dataclass(frozen=True)
class _Call:
    """A chat request parsed: which model answers, what it sends, and how the call goes."""

    model: SimModel
    reply: Reply
    plan: CallPlan
    stream: bool
    include_usage: bool


def _parse(sim: Simulator, body: Any) -> _Call | web.Response:
    """Validate a chat request and work out its reply, or the 4xx to answer instead."""
    if not isinstance(body, dict):
        return bad_request("the request body must be a JSON object")
    name = body.get("model")
    model = sim.models.get(name) if isinstance(name, str) else None
    if model is None:
        return model_not_found(name)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return bad_request("'messages' must be a non-empty array", "messages")
    top_n = body.get("top_logprobs") or 0
    if not isinstance(top_n, int) or not 0 <= top_n <= 20:
        return bad_request("'top_logprobs' must be an integer from 0 to 20", "top_logprobs")
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    answer = model.answer(messages)
    n, finish = len(answer.tokens), "stop"
    if isinstance(limit, int) and 0 < limit < n:
        n, finish = limit, "length"
    prompt = count_tokens(messages)
    usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
    reply = Reply(model.name, answer, n, finish, bool(body.get("logprobs")), top_n, usage)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return _Call(model, reply, model.plan_call(), bool(body.get("stream")), include_usage)


async def _hang(sim: Simulator) -> None:
    """Stall like a stuck upstream: for hang_s, or until the server shuts down."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(sim.closing.wait(), sim.scenario.hang_s)


def _sse_response() -> web.StreamResponse:
    return web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions: an answer paced by the latency model, or an injected failure."""
    sim = request.app[SIMULATOR]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return bad_request("the request body is not valid JSON")
    call = _parse(sim, body)
    if isinstance(call, web.Response):
        return call
    stats, plan = sim.stats[call.model.name], call.plan
    stats["calls"] += 1
    if plan.fate == "error":
        stats["errors"] += 1
        stats[f"status_{plan.status}"] += 1
        await asyncio.sleep(plan.ttft_s * 0.2)
        return simulated_error(plan.status)
    if plan.fate == "timeout":
        stats["timeouts"] += 1
        if call.stream:  # the stream opens, then stalls
            response = _sse_response()
            await response.prepare(request)
            await _hang(sim)
            return response
        await _hang(sim)
        return simulated_error(504)
    stats["ok"] += 1
    if not call.stream:
        await asyncio.sleep(plan.ttft_s + (call.reply.n_tokens - 1) * plan.token_s)
        return web.Response(
            body=completion_body(call.reply, sim.next_id()), content_type="application/json"
        )
    response = _sse_response()
    await response.prepare(request)
    encoder = ChunkEncoder(call.reply, sim.next_id(), call.include_usage)
    await asyncio.sleep(plan.ttft_s)
    for i in range(call.reply.n_tokens):
        if i:
            await asyncio.sleep(plan.token_s)
        await response.write(encoder.token(i))
    await response.write(encoder.tail())
    await response.write_eof()
    return response


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: every simulated model, with its role and prices."""
    sim = request.app[SIMULATOR]
    data = [
        {
            "id": m.name,
            "object": "model",
            "created": 1_700_000_000,
            "owned_by": "shadoweval-simulator",
            "role": m.spec.role,
            "pricing": m.spec.price.model_dump(),
        }
        for m in sim.models.values()
    ]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )


async def get_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}."""
    sim = request.app[SIMULATOR]
    name = request.match_info["model"]
    if name not in sim.models:
        return model_not_found(name)
    body = {
        "id": name,
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "shadoweval-simulator",
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def get_stats(request: web.Request) -> web.Response:
    """GET /sim/stats: per model, how many calls succeeded, failed or hung."""
    sim = request.app[SIMULATOR]
    return web.Response(
        body=orjson.dumps({k: dict(v) for k, v in sim.stats.items()}),
        content_type="application/json",
    )


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown routes and methods answer in OpenAI's error JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = error_body(
            exc.reason, "invalid_request_error", "not_found" if exc.status == 404 else None
        )
        return web.Response(status=exc.status, body=body, content_type="application/json")


def create_app(scenario: Scenario, task: Task | None = None) -> web.Application:
    """The simulator's aiohttp application."""
    app = web.Application(middlewares=[_json_errors], client_max_size=32 * 1024 * 1024)
    sim = Simulator(scenario, task)
    app[SIMULATOR] = sim

    async def release_hangs(_: web.Application) -> None:
        """Let hanging requests go at shutdown, so the server stops promptly."""
        sim.closing.set()

    app.on_shutdown.append(release_hangs)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/sim/stats", get_stats)
    return app


@dataclass
class RunningSimulator:
    """A simulator serving in this event loop; `base_url` ends in /v1."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def simulator(self) -> Simulator:
        return self.runner.app[SIMULATOR]

    async def close(self) -> None:
        """Stop serving; requests held by a simulated timeout are released first."""
        await self.runner.cleanup()


async def start_simulator(
    scenario: Scenario | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    task: Task | None = None,
) -> RunningSimulator:
    """Serve a scenario (the embedded default if None) in the running loop; port 0 picks a free one."""
    app = create_app(scenario or load_scenario(), task)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    return RunningSimulator(runner, host, int(bound))


class SimulatorThread:
    """A simulator on its own event loop in a background thread, for synchronous callers."""

    def __init__(
        self, scenario: Scenario | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._scenario, self._host, self._port = scenario, host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="simulator", daemon=True
        )
        self._running: RunningSimulator | None = None

    def start(self) -> SimulatorThread:
        """Start the loop thread and the server on it; returns once it listens."""
        self._thread.start()
        coro = start_simulator(self._scenario, self._host, self._port)
        self._running = asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)
        return self

    @property
    def running(self) -> RunningSimulator:
        if self._running is None:
            raise RuntimeError("the simulator thread is not started")
        return self._running

    @property
    def base_url(self) -> str:
        return self.running.base_url

    def stop(self) -> None:
        """Shut the server down and end the loop thread."""
        if self._running is not None:
            asyncio.run_coroutine_threadsafe(self._running.close(), self._loop).result(timeout=30)
            self._running = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
