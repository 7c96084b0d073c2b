"""What the live path records about one request: its `requests` row and production's answer.

A `Capture` watches one relayed exchange without ever holding it up. Nothing of it runs
before the request is on its way to production: once it is sent (`sent`), the body is
parsed, the sampler decides and the `requests` row is recorded, while production works.
Then the capture sees production's response headers (and hands a mirrored request to the
mirror), every body chunk right after the client got it (SSE chunks go to a
`StreamAssembler` as they come; a JSON answer is kept to be parsed once at the end), and
finally writes the production `responses` row. Any failure in here is logged and disables
the capture; it never breaks the relay.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import structlog

from proxy.answer import AssembledOutput, parse_completion
from proxy.config import ProductionSettings, Settings
from proxy.errors import upstream_error_code
from proxy.forward import Exchange, Incoming
from proxy.lake.rows import OMIT_KEY
from proxy.lake.schema import PRODUCTION
from proxy.mirror import Mirror, RowRecorder
from proxy.request_row import parse_json_object, request_row
from proxy.sampling import Sampler, SamplingDecision
from proxy.streaming import StreamAssembler
from proxy.upstream import UpstreamResponse

log = structlog.get_logger("shadoweval.capture")

EMBEDDINGS = "/v1/embeddings"
# An answer larger than this is relayed in full but not kept for the lake.
MAX_CAPTURE_BYTES = 8 * 1024 * 1024
# Embeddings answers can be huge; their usage sits at the end, so only the tail is kept.
_TAIL_BYTES = 4096
_USAGE_RE = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')


def _not_sampled(reason: str) -> SamplingDecision:
    """The decision used when the sampler itself failed: record, never mirror."""
    return SamplingDecision(
        mirrored=False, sample_rate=0.0, tags=[], session_id=None, reason=reason
    )


def production_cost(production: ProductionSettings, output: AssembledOutput | None) -> float | None:
    """USD for one production call from its usage and `production.price_*`; None without usage."""
    if output is None or (output.prompt_tokens is None and output.completion_tokens is None):
        return None
    return (
        (output.prompt_tokens or 0) * production.price_input_per_mtok
        + (output.completion_tokens or 0) * production.price_output_per_mtok
    ) / 1_000_000


class Capture:
    """Observes one production exchange on a recorded route and records what it saw."""

    def __init__(
        self,
        *,
        recorder: RowRecorder,
        mirror: Mirror,
        sampler: Sampler,
        settings: Settings,
        incoming: Incoming,
        body: bytes,
        received_at: int,
    ) -> None:
        """Cheap on purpose: it runs before production is asked; `sent` does the rest."""
        self._recorder = recorder
        self._mirror = mirror
        self._sampler = sampler
        self._settings = settings
        self._incoming = incoming
        self._raw_body = body
        self._received_at = received_at
        self.request_id = incoming.request_id
        self.route = incoming.path
        self._begun = self._written = False
        self._body: dict[str, Any] | None = None
        self._stream = False
        self._decision: SamplingDecision | None = None
        self._omit = False
        self._submitted = False
        self._assembler: StreamAssembler | None = None
        self._parts: list[bytes] | None = None
        self._size = 0
        self._tail = b""
        self._inflate: Any = None
        self._broken = False

    def sent(self) -> None:
        """The request was written to production (the relay's `on_sent` hook): decide about
        mirroring and record the `requests` row while production works."""
        self._written = True
        self._begin()

    def _begin(self) -> None:
        """Record the `requests` row and take the sampling decision, once."""
        if self._begun:
            return
        self._begun = True
        incoming, storage = self._incoming, self._settings.storage
        try:
            # First, so that no later failure can let this request's content be stored.
            self._omit = omit = (
                not storage.store_content
                or incoming.headers.get(storage.omit_header, "").strip().lower() == "content"
            )
            self._body = body = parse_json_object(self._raw_body)
            self._stream = body is not None and body.get("stream") is True
            try:
                decision = self._sampler.decide(self.route, incoming.headers, body)
            except Exception:
                log.exception("sampling failed; request not mirrored", route=self.route)
                decision = _not_sampled("sampler_error")
            self._recorder.record(
                "requests",
                request_row(
                    request_id=self.request_id,
                    received_at=self._received_at,
                    route=self.route,
                    method=incoming.method,
                    raw_body=self._raw_body,
                    body=body,
                    decision=decision,
                    omit=omit,
                ),
            )
            self._decision = decision  # no mirroring for a request whose row failed
        except Exception:  # recording must never break the relay
            log.exception("request not recorded", route=self.route)

    def submit_mirror(self) -> None:
        """Hand a mirrored request to the mirror, once, after production was asked."""
        decision = self._decision
        if self._submitted or decision is None or not decision.mirrored or self._body is None:
            return
        self._submitted = True
        try:
            self._mirror.submit(
                self.request_id, self.route, self._body, self._stream, omit_content=self._omit
            )
        except Exception:
            log.exception("mirror submit failed", route=self.route)

    def on_headers(self, upstream: UpstreamResponse) -> None:
        """Production answered: choose how to read its body, then start the shadow calls."""
        try:
            ctype = upstream.content_type
            encoding = upstream.content_encoding.strip().lower()
            if encoding in ("gzip", "deflate", "x-gzip"):
                # Asked for identity, got compressed anyway: inflate a copy for the record.
                self._inflate = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)
            elif encoding not in ("", "identity"):
                self._broken = True  # an encoding we do not decode: relay only
            if ctype.startswith("text/event-stream"):
                self._assembler = StreamAssembler()
            elif self.route != EMBEDDINGS or upstream.status >= 400:
                self._parts = []
        except Exception:
            self._fail("reading production's headers")
        self.submit_mirror()

    def on_chunk(self, chunk: bytes) -> None:
        """One body chunk, already written to the client."""
        if self._broken:
            return
        try:
            if self._inflate is not None:
                chunk = self._inflate.decompress(chunk)
            if self._assembler is not None:
                self._assembler.feed(chunk)
            elif self._parts is not None:
                self._size += len(chunk)
                if self._size > MAX_CAPTURE_BYTES:
                    self._parts = None
                    self._broken = True
                else:
                    self._parts.append(chunk)
            else:
                self._tail = (self._tail + chunk)[-_TAIL_BYTES:]
        except Exception:
            self._fail("reading production's answer")

    def _fail(self, what: str) -> None:
        """Stop capturing this answer (the relay goes on) and say why, once."""
        self._broken = True
        self._assembler = None
        self._parts = None
        log.warning("answer not captured", route=self.route, step=what, exc_info=True)

    def _output(self, status: int | None) -> tuple[AssembledOutput | None, str | None]:
        """The assembled output (None on an error status) and an error code if any."""
        if self._broken:
            return None, None
        if self._assembler is not None:
            return self._assembler.result(), None
        if self._parts is not None:
            raw = b"".join(self._parts)
            if status is not None and status >= 400:
                return None, upstream_error_code(raw)
            return parse_completion(raw), None
        match = _USAGE_RE.search(self._tail)
        if match is None:
            return None, None
        n = int(match.group(1))
        usage = AssembledOutput(
            text=None,
            finish_reason=None,
            prompt_tokens=n,
            completion_tokens=None,
            logprobs=None,
            model=None,
            complete=True,
        )
        return usage, None

    def finish(self, exchange: Exchange) -> None:
        """Record production's `responses` row (also after failures and disconnects).

        A mirrored request whose production answer never started (timeout, disconnect) is
        still handed to the mirror now; one production never received is not (a refused
        or timed-out connection, no free connection in time, a client gone before the send):
        there would be no production answer to compare with.
        """
        self._begin()  # a request never sent is still recorded
        if self._written and exchange.error != "connect":
            self.submit_mirror()
        try:
            output, code = self._output(exchange.status)
        except Exception:
            log.warning("answer not parsed", route=self.route, exc_info=True)
            output, code = None, None
        error, detail = exchange.error, exchange.error_detail
        if error is None and exchange.status is not None and exchange.status >= 400:
            error, detail = "http", code
        model = output.model if output is not None and output.model else None
        if model is None and self._body is not None and isinstance(self._body.get("model"), str):
            model = self._body["model"]
        self._recorder.record(
            "responses",
            {
                "request_id": self.request_id,
                "target": PRODUCTION,
                "source": "live",
                "model": model,
                "status": exchange.status,
                "error": error,
                "error_detail": detail,
                "started_at": exchange.started_at,
                "ttft_ms": exchange.ttft_ms if self._assembler is not None else None,
                "latency_ms": exchange.latency_ms,
                "output_text": output.text if output is not None else None,
                "finish_reason": output.finish_reason if output is not None else None,
                "prompt_tokens": output.prompt_tokens if output is not None else None,
                "completion_tokens": output.completion_tokens if output is not None else None,
                "cost_usd": production_cost(self._settings.production, output),
                "logprobs": output.logprobs if output is not None else None,
                "stream": self._stream,
                "attempt": 0,
                OMIT_KEY: self._omit,
            },
        )
