"""The OpenAI chat-completions wire format the simulator speaks: bodies, SSE chunks, errors.

Kept apart from the server so the shapes a client parses live in one place: a completion
body, the chunks of a stream in OpenAI's order (role, content tokens with their logprobs,
finish, optional usage, `[DONE]`), and error JSON.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import error_response
from shadoweval.simulator.models import Answer

FINGERPRINT = "fp_shadoweval_sim"
_ERRORS: dict[int, tuple[str, str, str | None]] = {
    429: (
        "Rate limit reached for requests (simulated).",
        "rate_limit_exceeded",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request (simulated).",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded (simulated).", "server_error", "overloaded"),
    504: ("Simulated upstream timeout.", "server_error", "timeout"),
}


def bad_request(message: str, param: str | None = None) -> web.Response:
    """400 with OpenAI's invalid_request_error body."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return web.Response(
        status=400, body=orjson.dumps({"error": error}), content_type="application/json"
    )


def model_not_found(name: object) -> web.Response:
    """404 as OpenAI answers a model name it does not serve."""
    message = f"The model `{name}` does not exist or you do not have access to it."
    return error_response(404, message, "invalid_request_error", "model_not_found")


def simulated_error(status: int) -> web.Response:
    """An injected failure with the error body a real provider sends for that status."""
    message, type_, code = _ERRORS.get(status, ("Simulated error.", "server_error", None))
    return error_response(status, message, type_, code)


def token_logprobs(answer: Answer, n: int, top_n: int) -> list[dict[str, Any]]:
    """OpenAI `logprobs.content` for the first n tokens: the first with the alternatives."""
    out = []
    for i, token in enumerate(answer.tokens[:n]):
        alts = answer.top if i == 0 else ((token, 0.97),)
        top = [
            {"token": t, "logprob": math.log(p) if p > 0 else -9999.0, "bytes": list(t.encode())}
            for t, p in alts[:top_n]
        ]
        out.append(
            {
                "token": token,
                "logprob": math.log(alts[0][1]),
                "bytes": list(token.encode()),
                "top_logprobs": top,
            }
        )
    return out


@dataclass(frozen=True)
class Reply:
    """What one call sends back: the answer cut to its token budget, and how it is framed."""

    model: str
    answer: Answer
    n_tokens: int
    finish_reason: str
    logprobs: bool
    top_n: int
    usage: dict[str, int]

    def lp_content(self) -> list[dict[str, Any]] | None:
        """The per-token logprobs, when the request asked for them."""
        return token_logprobs(self.answer, self.n_tokens, self.top_n) if self.logprobs else None


def completion_body(reply: Reply, completion_id: str) -> bytes:
    """A non-streamed `chat.completion` body."""
    content = reply.lp_content()
    choice = {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "".join(reply.answer.tokens[: reply.n_tokens]),
            "refusal": None,
        },
        "logprobs": None if content is None else {"content": content, "refusal": None},
        "finish_reason": reply.finish_reason,
    }
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
            "usage": reply.usage,
        }
    )


class ChunkEncoder:
    """The SSE events of one streamed reply, in the order OpenAI sends them."""

    def __init__(self, reply: Reply, completion_id: str, include_usage: bool) -> None:
        self.reply = reply
        self._base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": reply.model,
            "system_fingerprint": FINGERPRINT,
        }
        self._usage = include_usage
        self._extra = {"usage": None} if include_usage else {}
        self._lps = reply.lp_content()

    def _event(
        self, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None
    ) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return (
            b"data: " + orjson.dumps({**self._base, "choices": [choice], **self._extra}) + b"\n\n"
        )

    def token(self, i: int) -> bytes:
        """The event carrying token i (the first comes after the assistant-role event)."""
        lp = None if self._lps is None else {"content": [self._lps[i]], "refusal": None}
        event = self._event({"content": self.reply.answer.tokens[i]}, lp)
        if i == 0:
            return self._event({"role": "assistant", "content": "", "refusal": None}) + event
        return event

    def tail(self) -> bytes:
        """The finish event, the usage event when asked, and the terminator."""
        out = self._event({}, None, self.reply.finish_reason)
        if self._usage:
            usage = {**self._base, "choices": [], "usage": self.reply.usage}
            out += b"data: " + orjson.dumps(usage) + b"\n\n"
        return out + b"data: [DONE]\n\n"
