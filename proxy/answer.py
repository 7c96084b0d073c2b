"""A model's answer (text, finish reason, usage, logprobs) collected from any OpenAI shape.

Three OpenAI-compatible shapes are understood: chat completions (`choices[].delta` in a
stream, `choices[].message` in a body), legacy completions (`choices[].text`) and the
Responses API (`response.*` events and its body). Logprobs are kept as the JSON text of the
chat `logprobs.content` list, `[{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]`,
whatever the shape; the legacy completions form is converted to it. Only the first choice
(`index` 0) is collected. `proxy.streaming` feeds stream events into `AnswerParts`;
`parse_completion` reads a non-streaming body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

_RESPONSE_STATUS_FINISH = {"completed": "stop", "failed": "error", "cancelled": "cancelled"}
_INCOMPLETE_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}


@dataclass
class AssembledOutput:
    """What one model call produced, reduced to the columns of a `responses` row."""

    text: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    logprobs: str | None  # JSON text of the content logprobs list
    model: str | None
    complete: bool  # saw a finish_reason or [DONE] (a stream), or a well-formed body


def _int(value: Any) -> int | None:
    """A token count, or None for anything that is not an integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _legacy_logprobs(lp: dict[str, Any]) -> list[dict[str, Any]]:
    """Legacy completions `{tokens, token_logprobs, top_logprobs: [{tok: lp}]}` as a content list."""
    tokens = lp.get("tokens") or []
    values = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or []
    out: list[dict[str, Any]] = []
    for i, token in enumerate(tokens):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        out.append(
            {
                "token": token,
                "logprob": values[i] if i < len(values) else None,
                "top_logprobs": [{"token": t, "logprob": v} for t, v in top.items()],
            }
        )
    return out


def _choice_logprobs(lp: Any) -> list[dict[str, Any]] | None:
    """The content logprobs list of one choice (chat or legacy form), or None."""
    if not isinstance(lp, dict):
        return None
    content = lp.get("content")
    if isinstance(content, list):
        return content
    if isinstance(lp.get("tokens"), list):
        return _legacy_logprobs(lp)
    return None


def _tool_calls_text(calls: list[dict[str, Any]]) -> str:
    """Tool calls as the output text when a model answered with calls instead of content."""
    return orjson.dumps(
        [{"name": c.get("name"), "arguments": c.get("arguments")} for c in calls]
    ).decode()


class AnswerParts:
    """The pieces of one answer as they are collected, before they become an AssembledOutput."""

    __slots__ = (
        "complete",
        "completion_tokens",
        "finish_reason",
        "logprobs",
        "model",
        "prompt_tokens",
        "text",
        "tools",
    )

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.logprobs: list[Any] | None = None
        self.model: str | None = None
        self.complete = False

    def add_logprobs(self, items: list[Any] | None) -> None:
        """Append token logprobs (the list exists only once some arrived)."""
        if items:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(items)

    def usage(self, usage: Any) -> None:
        """Token counts from a usage object (chat/legacy or Responses API names)."""
        if not isinstance(usage, dict):
            return
        pt = _int(usage.get("prompt_tokens"))
        ct = _int(usage.get("completion_tokens"))
        if pt is None and ct is None:  # Responses API names
            pt = _int(usage.get("input_tokens"))
            ct = _int(usage.get("output_tokens"))
        if pt is not None:
            self.prompt_tokens = pt
        if ct is not None:
            self.completion_tokens = ct

    def output(self) -> AssembledOutput:
        """The collected pieces as one AssembledOutput (text and logprobs joined once, here)."""
        text: str | None = "".join(self.text) if self.text else None
        if not text and self.tools:
            text = _tool_calls_text([self.tools[i] for i in sorted(self.tools)])
        return AssembledOutput(
            text=text,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            logprobs=orjson.dumps(self.logprobs).decode() if self.logprobs is not None else None,
            model=self.model,
            complete=self.complete,
        )

    # -- chat and legacy completions ---------------------------------------------------------

    def stream_choices(self, choices: list[Any]) -> None:
        """The first choice of one chat or legacy completions chunk."""
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    self.text.append(content)
                calls = delta.get("tool_calls")
                if calls:
                    self._tool_deltas(calls)
            else:
                text = choice.get("text")
                if isinstance(text, str) and text:
                    self.text.append(text)
            lp = choice.get("logprobs")
            if lp is not None:
                self.add_logprobs(_choice_logprobs(lp))
            finish = choice.get("finish_reason")
            if finish is not None:
                self.finish_reason = str(finish)
                self.complete = True

    def _tool_deltas(self, calls: Any) -> None:
        """Streamed tool calls: names arrive once, arguments in pieces."""
        if not isinstance(calls, list):
            return
        for call in calls:
            if not isinstance(call, dict):
                continue
            idx = call.get("index", 0)
            slot = self.tools.setdefault(idx if isinstance(idx, int) else 0, {"name": None})
            fn = call.get("function")
            if isinstance(fn, dict):
                if fn.get("name"):
                    slot["name"] = fn["name"]
                args = fn.get("arguments")
                if isinstance(args, str):
                    slot["arguments"] = slot.get("arguments", "") + args

    def body_choices(self, choices: list[Any]) -> None:
        """The first choice of a non-streaming chat or legacy completions body."""
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            return
        message = choice.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                self.text.append(content)
            elif isinstance(content, list):  # content parts
                self.text.extend(
                    p["text"]
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            calls = message.get("tool_calls")
            if isinstance(calls, list):
                for i, call in enumerate(calls):
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict):
                        self.tools[i] = {"name": fn.get("name"), "arguments": fn.get("arguments")}
        elif isinstance(choice.get("text"), str):
            self.text.append(choice["text"])
        self.add_logprobs(_choice_logprobs(choice.get("logprobs")))
        finish = choice.get("finish_reason")
        self.finish_reason = str(finish) if finish is not None else None

    # -- Responses API -----------------------------------------------------------------------

    def response_event(self, kind: str, event: dict[str, Any]) -> None:
        """One Responses API stream event; the final body fills in what deltas did not."""
        if kind == "response.output_text.delta":
            delta = event.get("delta")
            if isinstance(delta, str):
                self.text.append(delta)
            lp = event.get("logprobs")
            if isinstance(lp, list):
                self.add_logprobs(lp)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            body = event.get("response")
            if isinstance(body, dict):
                self.response_body(body, text=not self.text)
            self.complete = True
        elif kind in ("response.created", "response.in_progress"):
            body = event.get("response")
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                self.model = self.model or body["model"]

    def response_body(self, body: dict[str, Any], *, text: bool = True) -> None:
        """A Responses API body: output text, tool calls, status, usage, model."""
        if isinstance(body.get("model"), str):
            self.model = body["model"]
        self.usage(body.get("usage"))
        status = body.get("status")
        if status == "incomplete":
            details = body.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            self.finish_reason = _INCOMPLETE_FINISH.get(str(reason), str(reason or "incomplete"))
        elif isinstance(status, str):
            self.finish_reason = _RESPONSE_STATUS_FINISH.get(status, status)
        calls = 0
        for item in body.get("output") or ():
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message" and text:
                for part in item.get("content") or ():
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        if isinstance(part.get("text"), str):
                            self.text.append(part["text"])
                        lp = part.get("logprobs")
                        if isinstance(lp, list):
                            self.add_logprobs(lp)
            elif item.get("type") == "function_call":
                self.tools[calls] = {"name": item.get("name"), "arguments": item.get("arguments")}
                calls += 1
        if calls and self.finish_reason == "stop" and not self.text:
            self.finish_reason = "tool_calls"


def parse_completion(body: bytes | dict[str, Any]) -> AssembledOutput:
    """The answer in a non-streaming body of chat/completions, completions or responses.

    Never raises: a body that is not JSON, or not an answer, gives `complete=False`.
    """
    parts = AnswerParts()
    if isinstance(body, dict):
        obj: Any = body
    else:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return parts.output()
    if not isinstance(obj, dict):
        return parts.output()
    if isinstance(obj.get("model"), str):
        parts.model = obj["model"]
    choices = obj.get("choices")
    if isinstance(choices, list) and choices:
        parts.body_choices(choices)
        parts.usage(obj.get("usage"))
        parts.complete = True
    elif obj.get("object") == "response" or isinstance(obj.get("output"), list):
        parts.response_body(obj)
        parts.complete = True
    elif isinstance(obj.get("data"), list):  # embeddings: usage only, no text
        parts.usage(obj.get("usage"))
        parts.complete = True
    return parts.output()
