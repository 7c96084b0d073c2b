"""A recorded request, and a model's output, as readable HTML: every piece of text escaped.

Chat messages become a conversation (system and developer prompts folded away in a
`<details>`), a completion prompt or a Responses-API input becomes the user's turn, tool
calls and JSON text are pretty-printed, images are named by their address (never
loaded: the page works offline and fetches nothing a prompt names), and the remaining
request parameters sit folded at the end. The request's `model` is left out: it names
the production model and could bias the labeller.
"""

from __future__ import annotations

import html
import json
from typing import Any

# Keys shown as the conversation itself, or left out, rather than as parameters.
_SHOWN = ("messages", "prompt", "input", "instructions")
_HIDDEN = ("model", "stream", "stream_options", "user", "metadata")
_SYSTEM_ROLES = ("system", "developer")
MAX_URL = 120


def esc(value: Any) -> str:
    """HTML-escape any value as text (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def _json_text(text: str) -> Any | None:
    """The JSON object or array a text holds, or None when it is prose."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, dict | list) else None


def text_block(text: str, css: str = "text") -> str:
    """Text as a block: JSON pretty-printed, prose with its line breaks kept."""
    value = _json_text(text)
    if value is not None:
        return f'<pre class="json">{esc(pretty_json(value))}</pre>'
    if not text.strip():
        return '<p class="muted">(empty)</p>'
    return f'<div class="{esc(css)}">{esc(text)}</div>'


def _url(url: Any) -> str:
    text = str(url)
    return text if len(text) <= MAX_URL else text[:MAX_URL] + "…"


def _part(part: Any) -> str:
    if isinstance(part, str):
        return text_block(part)
    if not isinstance(part, dict):
        return f'<pre class="json">{esc(pretty_json(part))}</pre>'
    kind = part.get("type")
    if isinstance(part.get("text"), str):
        return text_block(part["text"])
    if kind in ("image_url", "input_image"):
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return f'<p class="attachment">[image: {esc(_url(url))}]</p>'
    if kind in ("input_audio", "input_file", "file"):
        return f'<p class="attachment">[{esc(kind)}]</p>'
    return f'<pre class="json">{esc(pretty_json(part))}</pre>'


def content_html(content: Any) -> str:
    """A message's content: a string, a list of parts, or anything else as JSON."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(_part(p) for p in content)
    return _part(content)


def _tool_calls(calls: Any) -> str:
    if not isinstance(calls, list):
        return ""
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            args = fn.get("arguments")
            parsed = _json_text(args) if isinstance(args, str) else None
            shown = pretty_json(parsed) if parsed is not None else str(args or "")
            out.append(
                f'<div class="tool-call"><span class="tool-name">{esc(fn.get("name", "?"))}</span>'
                f'<pre class="json">{esc(shown)}</pre></div>'
            )
        else:
            out.append(f'<pre class="json">{esc(pretty_json(call))}</pre>')
    return "".join(out)


def message_html(message: Any) -> str:
    """One conversation turn; system/developer turns are folded."""
    if not isinstance(message, dict):
        return f'<div class="msg">{content_html(message)}</div>'
    role = str(message.get("role") or message.get("type") or "message")
    who = role + (f" · {message['name']}" if isinstance(message.get("name"), str) else "")
    body = content_html(message.get("content"))
    body += _tool_calls(message.get("tool_calls"))
    if "content" not in message and "tool_calls" not in message:
        rest = {k: v for k, v in message.items() if k not in ("role", "type")}
        body += f'<pre class="json">{esc(pretty_json(rest))}</pre>'
    if role in _SYSTEM_ROLES:
        return (
            f'<details class="msg role-system"><summary>{esc(who)} prompt</summary>{body}</details>'
        )
    return (
        f'<div class="msg role-{esc(role)}"><div class="role">{esc(who)}</div>'
        f'<div class="content">{body}</div></div>'
    )


def _turns(data: dict[str, Any]) -> list[str]:
    turns = []
    if isinstance(data.get("instructions"), str):
        turns.append(message_html({"role": "system", "content": data["instructions"]}))
    if isinstance(data.get("messages"), list):
        turns += [message_html(m) for m in data["messages"]]
    for key in ("prompt", "input"):
        value = data.get(key)
        if isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str | int) for v in value)
        ):
            turns.append(message_html({"role": "user", "content": str(value)}))
        elif isinstance(value, list):
            turns += [message_html(m) for m in value]
        elif value is not None:
            turns.append(message_html({"role": "user", "content": value}))
    return turns


def request_html(body: str | None) -> str:
    """The whole request: the conversation, then its parameters folded."""
    if body is None:
        return '<p class="muted">The content of this request was not stored.</p>'
    try:
        data = json.loads(body)
    except ValueError:
        return text_block(body)
    if not isinstance(data, dict):
        return f'<pre class="json">{esc(pretty_json(data))}</pre>'
    turns = _turns(data)
    params = {k: v for k, v in data.items() if k not in _SHOWN and k not in _HIDDEN}
    out = "".join(turns) or '<p class="muted">(no prompt in this request)</p>'
    if params:
        out += (
            '<details class="params"><summary>Request parameters</summary>'
            f'<pre class="json">{esc(pretty_json(params))}</pre></details>'
        )
    return out
