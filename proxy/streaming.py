"""Rebuild a model's answer (text, finish reason, usage, logprobs) from its SSE stream.

The proxy feeds production's server-sent events through a `StreamAssembler` as they reach the
client, and the model client does the same with candidate streams, so both must be cheap and
must accept bytes cut anywhere: mid-line, mid-UTF-8 character, between `\\r` and `\\n`. Only
the unfinished tail of the last line is kept between pieces; each complete event is parsed
once and reduced to a few fields.

This module only frames events; what each event contributes to the answer, for chat
completions, legacy completions and the Responses API, is `proxy.answer.AnswerParts`.
"""

from __future__ import annotations

import re

import orjson

from proxy.answer import AnswerParts, AssembledOutput

_CR_SPLIT = re.compile(rb"\r\n|\r")
_EOL = re.compile(rb"[\r\n]")
# A longer line is not an event anyone sends; it is dropped rather than held in memory.
MAX_LINE_BYTES = 8 * 1024 * 1024


class StreamAssembler:
    """Feed raw SSE bytes in whatever pieces they arrive; `result()` gives the answer so far."""

    __slots__ = ("_buf", "_cr", "_data", "_event", "_parts", "_skip", "bad_events", "events")

    def __init__(self) -> None:
        self._buf = bytearray()  # the unfinished last line
        self._cr = False  # the stream uses bare CR or CRLF line ends (rare)
        self._skip = False  # inside a line too long to keep
        self._data: bytes | None = None  # data lines of the event being read
        self._event: bytes | None = None  # its `event:` field
        self._parts = AnswerParts()
        self.events = 0  # events dispatched
        self.bad_events = 0  # events whose data was not JSON (cut or garbled)

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of the stream; parses every event it completes."""
        if not chunk:
            return
        if self._skip:  # the rest of an oversized line
            eol = _EOL.search(chunk)
            if eol is None:
                return
            self._skip = False
            chunk = chunk[eol.end() :]
        if not self._cr and b"\r" in chunk:
            self._cr = True
        if self._cr:
            self._feed_cr(chunk)
            return
        buf = self._buf
        if buf:
            if b"\n" not in chunk:  # still the same line: no rescan of what is held
                buf += chunk
                if len(buf) > MAX_LINE_BYTES:
                    self._overflow()
                return
            buf += chunk
            data: bytes | bytearray = buf
        else:
            data = chunk
        pos = 0
        line = self._line
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            line(data, pos, nl)
            pos = nl + 1
        if data is buf:
            del buf[:pos]
        elif pos < len(data):
            buf += data[pos:]
        if len(buf) > MAX_LINE_BYTES:
            self._overflow()

    def _overflow(self) -> None:
        """A line too long to be an event: drop it (and the event) instead of growing."""
        self._buf.clear()
        self._data = self._event = None
        self._skip = True
        self.bad_events += 1

    def _feed_cr(self, chunk: bytes) -> None:
        """Line ends other than LF: normalise them, holding back a CR that may precede an LF."""
        buf = self._buf
        if buf and not buf.endswith(b"\r") and _EOL.search(chunk) is None:
            buf += chunk  # still the same line: no rescan of what is held
            if len(buf) > MAX_LINE_BYTES:
                self._overflow()
            return
        buf += chunk
        end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        text = _CR_SPLIT.sub(b"\n", bytes(buf[:end]))
        del buf[:end]
        lines = text.split(b"\n")
        for piece in lines[:-1]:
            self._line(piece, 0, len(piece))
        buf[:0] = lines[-1]
        if len(buf) > MAX_LINE_BYTES:
            self._overflow()

    def _line(self, data: bytes | bytearray, start: int, end: int) -> None:
        """One complete line, `data[start:end]`, sliced only for the value that is kept."""
        if start == end:
            if self._data is not None:
                self._dispatch(self._data, self._event)
            self._data = self._event = None
            return
        if data.startswith(b"data:", start):
            skip = 6 if data.startswith(b"data: ", start) else 5
            value = bytes(data[start + skip : end])
            self._data = value if self._data is None else self._data + b"\n" + value
        elif data.startswith(b"event:", start):
            self._event = bytes(data[start + 6 : end]).strip()
        # comments (":") and other fields (id, retry) carry nothing we record

    def _dispatch(self, data: bytes, event: bytes | None) -> None:
        """One complete event: `[DONE]`, a chat/legacy chunk or a Responses API event."""
        self.events += 1
        if data == b"[DONE]":
            self._parts.complete = True
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.bad_events += 1
            return
        if not isinstance(obj, dict):
            return
        parts = self._parts
        choices = obj.get("choices")
        if isinstance(choices, list):
            if parts.model is None and isinstance(obj.get("model"), str):
                parts.model = obj["model"]
            if choices:
                parts.stream_choices(choices)
            usage = obj.get("usage")
            if usage:
                parts.usage(usage)
            return
        kind = obj.get("type")
        if not isinstance(kind, str) and event:
            kind = event.decode("utf-8", "replace")
        if isinstance(kind, str) and kind.startswith("response."):
            parts.response_event(kind, obj)

    def result(self) -> AssembledOutput:
        """The answer assembled from everything fed so far; call it once the stream ended.

        A last line or event the stream did not terminate still counts: if it was cut, its
        data does not parse and is ignored, so `complete` stays what the stream proved.
        """
        buf = self._buf
        if buf:
            line = bytes(buf.rstrip(b"\r"))
            buf.clear()
            self._line(line, 0, len(line))
        if self._data is not None:
            self._dispatch(self._data, self._event)
            self._data = self._event = None
        return self._parts.output()
