"""An LLM judge for outputs no simple scorer can grade, through any OpenAI-compatible endpoint.

Only outputs still without a verdict are sent, one per distinct (normalised) output of a
request: the other targets' identical outputs inherit the verdict. Verdicts are stored as
`verdict` labels with `source = judge`, so they are kept, versioned and overridable by a
human verdict like any other label, and a second run judges only what is new.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import duckdb

from analysis.comparisons import ComparisonTable
from analysis.scoring import normalize, parse_json_output, parse_verdict
from analysis.settings import AnalysisSettings, ScorerRule
from proxy.ids import new_id
from proxy.lake.writer import write_rows

WRITE_EVERY = 100  # labels are written in batches, so an interrupted run keeps its work


@dataclass(frozen=True)
class JudgeTask:
    """One output to grade."""

    request_id: str
    target: str
    output: str
    reference: str | None
    rule_index: int


@dataclass
class JudgeSummary:
    """What a judging pass did."""

    pending: int = 0
    judged: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def pending_tasks(table: ComparisonTable) -> list[JudgeTask]:
    """Outputs scored by a judge rule that have no verdict yet, one per distinct output."""
    seen: set[tuple[str, str]] = set()
    tasks = []
    for i in range(len(table)):
        if table.scorer[i] != "judge" or table.origin[i] is not None:
            continue
        text = table.output_text[i]
        if text is None or not table.observed[i]:
            continue
        key = (str(table.request_id[i]), normalize(text))
        if key in seen:
            continue
        seen.add(key)
        tasks.append(
            JudgeTask(
                key[0], str(table.target[i]), text, table.reference[i], int(table.rule_index[i])
            )
        )
    return tasks


def request_text(body: str | None) -> str:
    """The user-visible part of a recorded request body, as plain text for the judge."""
    try:
        data: Any = json.loads(body or "")
    except ValueError:
        return body or ""
    if not isinstance(data, dict):
        return str(data)
    if isinstance(data.get("messages"), list):
        lines = []
        for m in data["messages"]:
            content = m.get("content") if isinstance(m, dict) else m
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            lines.append(f"{m.get('role', 'user') if isinstance(m, dict) else 'user'}: {content}")
        return "\n".join(lines)
    for key in ("prompt", "input"):
        if key in data:
            value = data[key]
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return json.dumps(data, ensure_ascii=False)


def judge_prompt(rule: ScorerRule, question: str, reference: str | None, output: str) -> str:
    """The rule's template with {question}, {reference} and {output} filled in."""
    return (
        rule.prompt.replace("{question}", question)
        .replace("{reference}", reference if reference is not None else "(none given)")
        .replace("{output}", output)
    )


def parse_judge_reply(text: str) -> float:
    """The judge's verdict: a JSON object with `correct`/`score`, or the word (in)correct."""
    obj = parse_json_output(text)
    if isinstance(obj, dict):
        score = parse_verdict(obj)
        if score == score:
            return score
    words = normalize(text).split()
    for word in words:
        if word in ("incorrect", "false", "wrong"):
            return 0.0
        if word in ("correct", "true", "right"):
            return 1.0
    return float("nan")


async def _call(
    session: aiohttp.ClientSession, rule: ScorerRule, prompt: str
) -> tuple[float, str | None]:
    headers = {"Authorization": f"Bearer {rule.api_key}"} if rule.api_key else {}
    body = {
        "model": rule.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
    }
    url = f"{(rule.base_url or '').rstrip('/')}/chat/completions"
    try:
        async with session.post(
            url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=rule.timeout_s)
        ) as resp:
            if resp.status != 200:
                return float("nan"), f"judge answered HTTP {resp.status}"
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return float("nan"), f"judge call failed: {type(exc).__name__}"
    try:
        reply = data["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return float("nan"), "judge reply has no message content"
    score = parse_judge_reply(reply)
    return score, None if score == score else "judge reply has no verdict"


def _bodies(con: duckdb.DuckDBPyConnection, ids: Iterable[str]) -> dict[str, str | None]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = con.execute(
        "SELECT request_id, any_value(body) FROM requests "
        "WHERE request_id IN (SELECT unnest($ids)) GROUP BY request_id",
        {"ids": wanted},
    ).fetchall()
    return {r[0]: r[1] for r in rows}


async def judge_pending(
    data_dir: str | Path,
    settings: AnalysisSettings,
    table: ComparisonTable,
    con: duckdb.DuckDBPyConnection,
    *,
    session: aiohttp.ClientSession | None = None,
) -> JudgeSummary:
    """Grade every pending output and store the verdicts as labels; return what happened."""
    tasks = pending_tasks(table)
    summary = JudgeSummary(pending=len(tasks))
    if not tasks:
        return summary
    bodies = _bodies(con, (t.request_id for t in tasks))
    limits = {i: asyncio.Semaphore(r.max_concurrency) for i, r in enumerate(settings.scorers)}
    rows: list[dict[str, Any]] = []
    own_session = session is None
    http = session or aiohttp.ClientSession()

    async def one(task: JudgeTask) -> None:
        rule = settings.scorers[task.rule_index]
        prompt = judge_prompt(
            rule, request_text(bodies.get(task.request_id)), task.reference, task.output
        )
        async with limits[task.rule_index]:
            score, error = await _call(http, rule, prompt)
        if error is not None:
            summary.failed += 1
            if len(summary.errors) < 10:
                summary.errors.append(f"{task.request_id}/{task.target}: {error}")
            return
        summary.judged += 1
        rows.append(
            {
                "label_id": new_id(),
                "request_id": task.request_id,
                "kind": "verdict",
                "target": task.target,
                "value": json.dumps({"correct": score >= 0.5, "score": score}),
                "labeller": f"judge:{rule.model}",
                "source": "judge",
                "created_at": datetime.now(UTC),
            }
        )
        if len(rows) >= WRITE_EVERY:
            batch = rows[:]
            rows.clear()
            write_rows(data_dir, "labels", batch, kind="judge")

    try:
        await asyncio.gather(*(one(t) for t in tasks))
    finally:
        if rows:
            write_rows(data_dir, "labels", rows, kind="judge")
        if own_session:
            await http.close()
    return summary
