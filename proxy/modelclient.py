"""One call to an OpenAI-compatible candidate model, measured and classified, never raising.

Used by the mirror (live shadow calls) and by replay (offline), so a candidate's numbers mean
the same thing in both. The request is the client's body with the candidate's `model`, its
`extra_body` merged in, and only the candidate's own credentials and headers: nothing of the
client's request headers ever reaches a candidate. A stream is read to its end and assembled,
so the time to first byte (`ttft_ms`) and the whole call (`latency_ms`) are both measured.

Failures become an error kind, never an exception: `timeout` (no complete answer within
`candidate.timeout_s`), `connect` (no connection, or it broke before the answer started),
`http` (an error status, kept in `status`), `invalid` (200 but not an answer: not JSON, no
choices, or a stream cut before its finish_reason or `[DONE]`). Only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from proxy.answer import AssembledOutput, parse_completion
from proxy.config import CandidateSettings
from proxy.errors import describe_exception, upstream_error_code
from proxy.model_transport import AiohttpTransport, Answer, PoolTransport, Transport
from proxy.streaming import StreamAssembler
from proxy.upstream import UpstreamError, UpstreamPool

# Routes whose chat/legacy streams understand `stream_options.include_usage`.
_USAGE_OPTION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
# A non-streaming answer larger than this is not a completion we can keep.
MAX_BODY_BYTES = 32 * 1024 * 1024
_DETAIL_CHARS = 200


@dataclass
class CallOutcome:
    """What one model call did: its status or error kind, its timings and its answer."""

    status: int | None
    error: str | None  # None | timeout | connect | http | invalid | dropped | budget
    error_detail: str | None
    started_at: datetime
    ttft_ms: float | None
    latency_ms: float | None
    output: AssembledOutput | None
    stream: bool

    @classmethod
    def not_made(cls, error: str, detail: str, *, stream: bool) -> CallOutcome:
        """A call that was never sent (dropped at a bound, or over budget)."""
        return cls(None, error, detail, datetime.now(UTC), None, None, None, stream)

    def to_row(
        self,
        *,
        request_id: str,
        target: str,
        source: str,
        model: str,
        cost_usd: float | None,
        attempt: int = 0,
    ) -> dict[str, Any]:
        """This outcome as a `responses` row of the lake."""
        out = self.output
        return {
            "request_id": request_id,
            "target": target,
            "source": source,
            "model": model,
            "status": self.status,
            "error": self.error,
            "error_detail": self.error_detail,
            "started_at": self.started_at,
            "ttft_ms": self.ttft_ms,
            "latency_ms": self.latency_ms,
            "output_text": out.text if out is not None else None,
            "finish_reason": out.finish_reason if out is not None else None,
            "prompt_tokens": out.prompt_tokens if out is not None else None,
            "completion_tokens": out.completion_tokens if out is not None else None,
            "cost_usd": cost_usd,
            "logprobs": out.logprobs if out is not None else None,
            "stream": self.stream,
            "attempt": attempt,
        }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in, nested objects merged key by key; neither is modified."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        out[key] = merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def _is_answer(obj: Any) -> bool:
    """A completion (choices), a Responses body (output) or embeddings (data)."""
    if not isinstance(obj, dict):
        return False
    return bool(obj.get("choices")) or isinstance(obj.get("output"), list) or "data" in obj


class _Call:
    """The clock and the outcome of one call while it runs."""

    __slots__ = ("outcome", "t0")

    def __init__(self, stream: bool) -> None:
        self.t0 = time.perf_counter()
        self.outcome = CallOutcome(None, None, None, datetime.now(UTC), None, None, None, stream)

    def ms(self) -> float:
        """Milliseconds since the call started."""
        return (time.perf_counter() - self.t0) * 1000.0

    def fail(self, kind: str, detail: str | None) -> CallOutcome:
        """Mark the call failed (the first failure wins) and stop its clock."""
        if self.outcome.error is None:
            self.outcome.error, self.outcome.error_detail = kind, detail
        if self.outcome.latency_ms is None:
            self.outcome.latency_ms = self.ms()
        return self.outcome


class ModelClient:
    """Calls one candidate: over the live path's lean pool, or a shared aiohttp session.

    The mirror gives each candidate its own `UpstreamPool` (the live path's HTTP client, a
    fraction of aiohttp's cost per call); replay passes an aiohttp session it owns.
    """

    def __init__(
        self, http: aiohttp.ClientSession | UpstreamPool, candidate: CandidateSettings
    ) -> None:
        self.candidate = candidate
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
        for name, value in candidate.headers.items():
            headers[name] = value
        if candidate.api_key:
            headers["Authorization"] = f"Bearer {candidate.api_key}"
        self._headers = headers
        self._base = candidate.base_url
        self._transport: Transport = (
            PoolTransport(http, headers)
            if isinstance(http, UpstreamPool)
            else AiohttpTransport(http, headers)
        )

    def url(self, route: str) -> str:
        """`/v1/chat/completions` -> `<base_url>/chat/completions` (base_url ends in /v1)."""
        return self._base + (route[3:] if route.startswith("/v1/") else route)

    def payload(self, route: str, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        """The candidate's request body: its model, its extra params, streaming as asked."""
        c = self.candidate
        out = merge(body, c.extra_body) if c.extra_body else dict(body)
        out["model"] = c.model
        if stream:
            out["stream"] = True
            if c.stream_include_usage and route in _USAGE_OPTION_ROUTES:
                options = out.get("stream_options")
                base = options if isinstance(options, dict) else {}
                out["stream_options"] = {**base, "include_usage": True}
        else:
            out.pop("stream", None)
            out.pop("stream_options", None)
        return out

    async def call(self, route: str, body: dict[str, Any], *, stream: bool) -> CallOutcome:
        """Make the call and say how it went; raises only when cancelled."""
        run = _Call(stream)
        try:
            data = orjson.dumps(self.payload(route, body, stream=stream))
        except (TypeError, orjson.JSONEncodeError) as exc:
            return run.fail(
                "invalid", f"request body cannot be sent: {describe_exception(exc, _DETAIL_CHARS)}"
            )
        try:
            async with asyncio.timeout(self.candidate.timeout_s):
                return await self._exchange(run, route, data)
        except TimeoutError:
            return run.fail("timeout", f"no complete answer within {self.candidate.timeout_s}s")
        except UpstreamError as exc:
            kind = "connect" if run.outcome.status is None and exc.kind == "connect" else "invalid"
            return run.fail(kind, describe_exception(exc, _DETAIL_CHARS))
        except aiohttp.ClientConnectionError as exc:
            # Before the status line: unreachable. After it: the answer broke off.
            kind = "connect" if run.outcome.status is None else "invalid"
            return run.fail(kind, describe_exception(exc, _DETAIL_CHARS))
        except aiohttp.ClientError as exc:
            return run.fail("invalid", describe_exception(exc, _DETAIL_CHARS))
        except (OSError, ValueError) as exc:
            return run.fail(
                "connect" if run.outcome.status is None else "invalid",
                describe_exception(exc, _DETAIL_CHARS),
            )

    async def _exchange(self, run: _Call, route: str, data: bytes) -> CallOutcome:
        """Send the request and read the answer as a stream or as one body."""
        outcome = run.outcome
        answer = await self._transport.post(self.url(route), data)
        complete = False
        try:
            outcome.status = answer.status
            if answer.status >= 300:
                raw, _ = await _read_upto(answer, 64 * 1024)
                return run.fail("http", upstream_error_code(raw))
            if outcome.stream and answer.content_type.startswith("text/event-stream"):
                result = await self._read_stream(run, answer)
                complete = True
                return result
            raw, complete = await _read_upto(answer, MAX_BODY_BYTES)
            outcome.latency_ms = run.ms()
            if not complete:
                return run.fail("invalid", f"answer larger than {MAX_BODY_BYTES} bytes")
            return self._parse_body(run, raw)
        finally:
            answer.finish(complete)

    async def _read_stream(self, run: _Call, answer: Answer) -> CallOutcome:
        """Read an SSE answer to its end, assembling it as it arrives."""
        outcome = run.outcome
        assembler = StreamAssembler()
        try:
            while chunk := await answer.read():
                if outcome.ttft_ms is None:
                    outcome.ttft_ms = run.ms()
                assembler.feed(chunk)
        finally:
            # Whatever arrived before a cut or a timeout is kept: it was produced and billed.
            outcome.output = assembler.result()
        outcome.latency_ms = run.ms()
        if not outcome.output.complete:
            return run.fail("invalid", "stream ended without a finish_reason or [DONE]")
        return outcome

    @staticmethod
    def _parse_body(run: _Call, raw: bytes) -> CallOutcome:
        """A non-streaming answer: JSON with choices (or output, or data), else invalid."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return run.fail("invalid", "answer is not JSON")
        if not _is_answer(obj):
            return run.fail("invalid", "answer has no choices")
        run.outcome.output = parse_completion(obj)
        return run.outcome

    def cost_usd(self, outcome: CallOutcome) -> float | None:
        """USD of one call from its token usage and the candidate's prices; None without usage."""
        out = outcome.output
        if out is None or (out.prompt_tokens is None and out.completion_tokens is None):
            return None
        c = self.candidate
        return (
            (out.prompt_tokens or 0) * c.price_input_per_mtok
            + (out.completion_tokens or 0) * c.price_output_per_mtok
        ) / 1_000_000


async def _read_upto(answer: Answer, limit: int) -> tuple[bytes, bool]:
    """The body, up to `limit` bytes; and whether it ended within them."""
    parts: list[bytes] = []
    size = 0
    while chunk := await answer.read():
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts)[:limit], False
    return b"".join(parts), True
