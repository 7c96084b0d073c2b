"""Row factories shared by the lake tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.config import StorageSettings
from proxy.ids import new_id

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def request_row(i: int, when: datetime = T0, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": f"req-{i:06d}",
        "received_at": when,
        "route": "/v1/chat/completions",
        "method": "POST",
        "model": "gpt-test",
        "stream": i % 2 == 0,
        "body": orjson.dumps(
            {"model": "gpt-test", "messages": [{"role": "user", "content": f"question {i}"}]}
        ).decode(),
        "prompt_hash": f"{i:064x}",
        "session_id": f"s{i % 7}",
        "tags": ["t1", f"n{i % 3}"],
        "sample_rate": 0.25,
        "mirrored": i % 4 == 0,
    }
    row.update(extra)
    return row


def response_row(
    i: int, target: str = "production", when: datetime = T0, **extra: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": f"req-{i:06d}",
        "target": target,
        "source": "live",
        "model": "gpt-test",
        "status": 200,
        "started_at": when,
        "ttft_ms": 12.5,
        "latency_ms": 100.0 + i,
        "output_text": f"answer {i}",
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 5 + i % 3,
        "cost_usd": 0.0001,
        "stream": False,
        "attempt": 0,
    }
    row.update(extra)
    return row


def label_row(
    request_id: str, value: Any, when: datetime, target: str | None = None, kind: str = "verdict"
) -> dict[str, Any]:
    return {
        "label_id": new_id(int(when.timestamp() * 1000)),
        "request_id": request_id,
        "kind": kind,
        "target": target,
        "value": orjson.dumps(value).decode(),
        "labeller": "tester",
        "source": "human",
        "created_at": when,
    }


def storage(data_dir: Path, **kw: Any) -> StorageSettings:
    base: dict[str, Any] = {"data_dir": data_dir, "flush_interval_s": 0.05, "flush_rows": 1000}
    base.update(kw)
    return StorageSettings(**base)


async def until(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    """Wait (polling) until `cond()` holds; fail the test after `within_s`."""
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
