"""A small lake for the labelling UI tests, written with proxy.lake.writer.write_rows.

Eight eval-set items in two strata, answered by production and two candidates whose names
never appear in a prompt or an output, so a page that mentions them has leaked them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.lake.reader import connect
from proxy.lake.writer import write_rows

EVAL_SET = "es-ui"
TARGETS = ("production", "cand-swift", "cand-deep")
CANDIDATES = TARGETS[1:]
SCRIPT_PROMPT = "Please summarise: <script>alert(1)</script> and <b>bold</b> & more"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _chat(messages: list[dict[str, Any]], **params: Any) -> str:
    return json.dumps({"model": "gpt-prod-x", "messages": messages, **params})


def bodies() -> dict[str, str]:
    """Request bodies by request id; rid-script carries HTML and a script tag."""
    out = {
        f"rid-{i}": _chat([{"role": "user", "content": f"Which queue handles ticket {i}?"}])
        for i in range(5)
    }
    out["rid-sys"] = _chat(
        [
            {"role": "system", "content": "You route support tickets. Answer with JSON."},
            {"role": "user", "content": '{"ticket": "refund please", "lang": "en"}'},
        ],
        temperature=0.2,
    )
    out["rid-script"] = _chat([{"role": "user", "content": SCRIPT_PROMPT}])
    out["rid-failed"] = _chat([{"role": "user", "content": "Nobody answered this one."}])
    return out


def outputs(rid: str) -> dict[str, str | None]:
    """Each target's output text for an item; None is a failed call."""
    if rid == "rid-failed":
        return dict.fromkeys(TARGETS)
    if rid == "rid-sys":
        return {
            "production": '{"queue": "billing", "confidence": 0.9}',
            "cand-swift": '{"queue": "refund"}',
            "cand-deep": '{"queue": "billing", "confidence": 0.9}',
        }
    if rid == "rid-script":
        return {
            "production": "A summary with <img src=x onerror=alert(2)> inside.",
            "cand-swift": "Short summary.",
            "cand-deep": "Longer summary </textarea><script>alert(3)</script>",
        }
    n = rid.split("-")[1]
    return {
        "production": f"billing (ticket {n})",
        "cand-swift": f"technical (ticket {n})",
        "cand-deep": f"account (ticket {n})",
    }


def build_lake(data_dir: Path, eval_set: str = EVAL_SET) -> Path:
    """Write requests, responses and an eval set; returns data_dir."""
    requests, responses, items = [], [], []
    for k, (rid, body) in enumerate(sorted(bodies().items())):
        at = T0 + timedelta(minutes=k)
        requests.append(
            {
                "request_id": rid,
                "received_at": at,
                "route": "/v1/chat/completions",
                "method": "POST",
                "model": "gpt-prod-x",
                "stream": False,
                "body": body,
                "prompt_hash": f"h-{rid}",
                "tags": ["email" if k % 2 else "chat"],
                "sample_rate": 1.0,
                "mirrored": True,
            }
        )
        for target, text in outputs(rid).items():
            responses.append(
                {
                    "request_id": rid,
                    "target": target,
                    "source": "live",
                    "model": f"{target}-model",
                    "status": 200 if text is not None else None,
                    "error": None if text is not None else "timeout",
                    "started_at": at,
                    "latency_ms": 100.0,
                    "output_text": text,
                    "finish_reason": "stop" if text is not None else None,
                    "attempt": 0,
                }
            )
        items.append(
            {
                "eval_set": eval_set,
                "request_id": rid,
                "stratum": "email" if k % 2 else "chat",
                "inclusion_prob": 0.5,
                "created_at": T0 + timedelta(hours=1),
            }
        )
    write_rows(data_dir, "requests", requests, kind="test")
    write_rows(data_dir, "responses", responses, kind="test")
    write_rows(data_dir, "eval_sets", items, kind="test")
    return data_dir


def judgeable(rid: str) -> list[str]:
    return sorted(t for t, text in outputs(rid).items() if text is not None)


def label_rows(data_dir: Path) -> list[dict[str, Any]]:
    """Every label row in the lake, oldest first."""
    con = connect(data_dir)
    try:
        cur = con.execute(
            "SELECT request_id, kind, target, value, labeller, source FROM labels "
            "ORDER BY created_at, label_id"
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
