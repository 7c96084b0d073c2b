"""A fake OpenAI-compatible candidate model on loopback, with the faults a real one shows.

`FakeCandidate.mode` picks the behaviour of the next calls: `ok` answers (chat, legacy
completions, Responses, embeddings; streaming or not), `hang` never answers, `500` answers
an error, `invalid` answers 200 with a body that is not JSON, `nochoices` answers JSON
without choices, `cut` opens a stream and closes the connection halfway. `delay_s` slows every
answer down. Every request is kept with its headers, so tests can check what arrived.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

ANSWER_PIECES = ["The ", "answer ", "is ", "café ", "☕", "."]
ANSWER = "".join(ANSWER_PIECES)
USAGE = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}


def token_logprobs(pieces: list[str]) -> list[dict[str, Any]]:
    """OpenAI chat `logprobs.content` items for these tokens."""
    return [
        {
            "token": p,
            "logprob": -0.1 * (i + 1),
            "bytes": list(p.encode()),
            "top_logprobs": [
                {"token": p, "logprob": -0.1 * (i + 1), "bytes": None},
                {"token": p.upper(), "logprob": -3.0, "bytes": None},
            ],
        }
        for i, p in enumerate(pieces)
    ]


def sse(obj: Any) -> bytes:
    data = obj if isinstance(obj, str) else orjson.dumps(obj).decode()
    return f"data: {data}\n\n".encode()


def chat_chunk(model: str, delta: dict[str, Any], **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None, **choice}],
    }


def chat_stream(
    model: str = "cand-model",
    pieces: list[str] = ANSWER_PIECES,
    *,
    logprobs: bool = False,
    usage: bool = False,
    done: bool = True,
) -> list[bytes]:
    """The SSE events of one streamed chat completion, as OpenAI sends them."""
    lps = token_logprobs(pieces)
    events = [sse(chat_chunk(model, {"role": "assistant", "content": ""}))]
    for i, p in enumerate(pieces):
        lp = {"content": [lps[i]], "refusal": None} if logprobs else None
        events.append(sse(chat_chunk(model, {"content": p}, logprobs=lp)))
    events.append(sse(chat_chunk(model, {}, finish_reason="stop")))
    if usage:
        events.append(sse({**chat_chunk(model, {}), "choices": [], "usage": USAGE}))
    if done:
        events.append(sse("[DONE]"))
    return events


def chat_body(model: str = "cand-model", *, logprobs: bool = False) -> dict[str, Any]:
    lp = {"content": token_logprobs(ANSWER_PIECES), "refusal": None} if logprobs else None
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
                "logprobs": lp,
            }
        ],
        "usage": USAGE,
    }


def response_body(model: str = "cand-model", status: str = "completed") -> dict[str, Any]:
    """A Responses API body."""
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": status,
        "model": model,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": ANSWER, "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 12, "output_tokens": 6, "total_tokens": 18},
    }


def responses_stream(model: str = "cand-model", status: str = "completed") -> list[bytes]:
    """The named SSE events of one streamed Responses API call."""
    created = {**response_body(model), "status": "in_progress", "output": [], "usage": None}

    def ev(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\n".encode() + sse({"type": kind, **fields})

    out = [ev("response.created", response=created)]
    for p in ANSWER_PIECES:
        out.append(
            ev(
                "response.output_text.delta",
                item_id="msg_1",
                output_index=0,
                content_index=0,
                delta=p,
            )
        )
    out.append(ev("response.output_text.done", item_id="msg_1", text=ANSWER))
    kind = "response.completed" if status == "completed" else "response.incomplete"
    out.append(ev(kind, response=response_body(model, status)))
    return out


@dataclass
class Received:
    """One request as the candidate saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


class FakeCandidate:
    """An OpenAI-compatible server whose behaviour a test switches with `mode` and `delay_s`."""

    def __init__(self, mode: str = "ok", delay_s: float = 0.0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.received: list[Received] = []
        self.active = 0
        self.max_active = 0
        self.release = asyncio.Event()  # set at close: hanging handlers return
        self.arrived = asyncio.Event()  # set by every request
        self.server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1"))

    async def start(self) -> FakeCandidate:
        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        self.release.set()
        if self.server is not None:
            await self.server.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.received.append(Received(request.path, dict(request.headers), body))
        self.arrived.set()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._answer(request, body or {})
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if self.mode == "hang":
            await self.release.wait()
            return web.Response(status=503)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        model = str(body.get("model", "?"))
        if self.mode == "500":
            return web.json_response(
                {"error": {"message": "overloaded", "type": "server_error", "code": "busy"}},
                status=500,
            )
        if self.mode == "invalid":
            return web.Response(body=b"<html>not json", content_type="application/json")
        if self.mode == "nochoices":
            return web.json_response({"id": "x", "object": "chat.completion", "model": model})
        path = request.path
        if path.endswith("/embeddings"):
            return web.json_response(
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
                    "model": model,
                    "usage": {"prompt_tokens": 3, "total_tokens": 3},
                }
            )
        if path.endswith("/responses"):
            if body.get("stream"):
                return await self._stream(request, responses_stream(model))
            return web.json_response(response_body(model))
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            events = chat_stream(model, logprobs=bool(body.get("logprobs")), usage=include)
            if self.mode == "cut":
                return await self._stream(request, events[: len(events) // 2], cut=True)
            return await self._stream(request, events)
        return web.json_response(chat_body(model, logprobs=bool(body.get("logprobs"))))

    async def _stream(
        self, request: web.Request, events: list[bytes], *, cut: bool = False
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for e in events:
            await resp.write(e)
            await asyncio.sleep(0)
        if cut:
            await asyncio.sleep(0.01)
            assert request.transport is not None
            request.transport.close()  # no terminating chunk: the client sees a broken stream
            return resp
        await resp.write_eof()
        return resp


def refused_url() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
