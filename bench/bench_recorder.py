"""Recorder throughput, its CPU share at a steady request rate, and a comparison query over 1M requests.

1. Throughput: realistic `requests` and `responses` rows (JSON bodies and outputs of about
   1 KB, a few per cent carrying an e-mail address, a phone number or an API key, so the
   precise redaction path runs too) are recorded as fast as the event loop can hand them
   over, with the process pinned to one core; the clock starts once start-up work is done
   and stops when `close()` has written every row. Reported per wall-clock second and per
   CPU second of the process (on a shared machine other tenants stretch the wall clock, not
   the CPU time). Repeated; median and range, with redaction on and off.
2. CPU share: 1,000 proxied requests/s (2,000 rows/s) for a while; process CPU time minus
   that of the same feeding loop without a recorder, as a share of one core.
3. Comparison query: 1M requests, 3M responses (production and two candidates) and 30,000
   labels written as 5,000-row segments; the time of a join of requests, responses and
   `labels_latest` grouped by target, through the lake's views, before and after compaction.

Usage: python -m bench.bench_recorder [--runs 5] [--rows 200000] [--skip-query] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from proxy.config import RedactionSettings, StorageSettings
from proxy.ids import new_id
from proxy.lake.compaction import compact
from proxy.lake.reader import connect
from proxy.lake.recorder import Recorder
from proxy.lake.schema import DATASETS, SCHEMA_VERSION
from proxy.lake.writer import SegmentWriter

WORDS = [
    "the",
    "order",
    "customer",
    "refund",
    "shipping",
    "account",
    "please",
    "could",
    "you",
    "help",
    "with",
    "my",
    "invoice",
    "delivery",
    "package",
    "tracking",
    "week",
    "support",
    "agent",
    "reply",
    "policy",
    "return",
    "product",
    "quality",
    "issue",
    "update",
    "address",
    "payment",
    "card",
    "error",
    "message",
    "screen",
    "login",
    "password",
    "reset",
    "email",
    "phone",
    "call",
    "today",
    "yesterday",
    "tomorrow",
    "price",
    "discount",
    "plan",
    "upgrade",
    "cancel",
    "subscription",
    "thanks",
    "regards",
    "summary",
    "report",
    "table",
    "data",
    "model",
    "answer",
    "question",
    "explain",
    "detail",
    "step",
    "list",
    "format",
    "json",
]


STARTUP_S = 1.0


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _text(rng: random.Random, approx_bytes: int) -> str:
    parts = []
    size = 0
    while size < approx_bytes:
        s = _sentence(rng, rng.randint(6, 16)).capitalize() + rng.choice([". ", "? ", ".\n"])
        if rng.random() < 0.05:
            s += f"Order {rng.randint(10000, 99999)} from {2020 + rng.randint(0, 6)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}. "
        parts.append(s)
        size += len(s)
    p = rng.random()
    if p < 0.02:
        parts.append(f"Write to {rng.choice(WORDS)}.{rng.choice(WORDS)}@example.com. ")
    elif p < 0.03:
        parts.append(f"Call me at (555) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}. ")
    elif p < 0.035:
        parts.append("my key is sk-proj-" + "".join(rng.choices("abcdefXYZ0123456789", k=24)) + " ")
    return "".join(parts)


def make_rows(n_requests: int, seed: int = 1) -> list[tuple[str, dict[str, Any]]]:
    """Request and production-response rows, as the proxy hands them to the recorder."""
    rng = random.Random(seed)
    pool = 4000  # distinct texts, reused across rows
    prompts = [_text(rng, 850) for _ in range(pool)]
    outputs = [_text(rng, 1000) for _ in range(pool)]
    now = datetime.now(UTC)
    rows: list[tuple[str, dict[str, Any]]] = []
    for i in range(n_requests):
        rid = new_id()
        prompt = prompts[i % pool]
        body = orjson.dumps(
            {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You are a helpful support assistant."},
                    {"role": "user", "content": prompt},
                ],
                "temperature": 0.2,
                "stream": i % 3 == 0,
            }
        ).decode()
        rows.append(
            (
                "requests",
                {
                    "request_id": rid,
                    "received_at": now,
                    "route": "/v1/chat/completions",
                    "method": "POST",
                    "model": "gpt-4o-mini",
                    "stream": i % 3 == 0,
                    "body": body,
                    "prompt_hash": hashlib.sha256(prompt.encode()).hexdigest(),
                    "session_id": f"s{i % 500}",
                    "tags": ["support", f"tier{i % 3}"],
                    "sample_rate": 0.1,
                    "mirrored": i % 10 == 0,
                },
            )
        )
        rows.append(
            (
                "responses",
                {
                    "request_id": rid,
                    "target": "production",
                    "source": "live",
                    "model": "gpt-4o-mini",
                    "status": 200,
                    "started_at": now,
                    "ttft_ms": 180.0 + i % 50,
                    "latency_ms": 900.0 + i % 400,
                    "output_text": outputs[i % pool],
                    "finish_reason": "stop",
                    "prompt_tokens": 230,
                    "completion_tokens": 250,
                    "cost_usd": 0.00019,
                    "stream": i % 3 == 0,
                    "attempt": 0,
                },
            )
        )
    return rows


def _storage(data_dir: Path, n: int, redaction: bool) -> StorageSettings:
    return StorageSettings(
        data_dir=data_dir,
        buffer_max_rows=n + 1,
        redaction=RedactionSettings(builtin=redaction),
    )


async def _throughput_once(
    rows: list[tuple[str, dict[str, Any]]], redaction: bool
) -> tuple[float, float]:
    """(records per wall-clock second, records per CPU second of the process)."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-rec-"))
    try:
        rec = Recorder(_storage(data_dir, len(rows), redaction), maintenance_interval_s=None)
        await rec.start()
        await asyncio.sleep(STARTUP_S)  # start-up work (catalog refresh) is not throughput
        t0 = time.perf_counter()
        c0 = time.process_time()
        dropped = 0
        for i, (ds, row) in enumerate(rows):
            # The recorder only reads rows, so the same dicts serve every run.
            dropped += not rec.record(ds, row)
            if i % 2000 == 1999:
                await asyncio.sleep(0)
        await rec.close()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        written = (
            connect(data_dir)
            .execute("SELECT (SELECT count(*) FROM requests) + (SELECT count(*) FROM responses)")
            .fetchone()
        )
        assert dropped == 0 and written == (len(rows),), (dropped, written)
        return len(rows) / elapsed, len(rows) / cpu
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _cpu_share(
    rows: list[tuple[str, dict[str, Any]]], seconds: float, rate: int
) -> dict[str, float]:
    """CPU of recording `rate` requests/s (two rows each), as a share of one core."""

    async def feed(sink: Any) -> tuple[float, float]:
        per_tick = rate // 100  # requests per 10 ms tick
        loop = asyncio.get_running_loop()
        start = loop.time()
        c0 = time.process_time()
        i = 0
        tick = 0
        while loop.time() - start < seconds:
            for _ in range(per_tick):
                for ds, row in rows[(2 * i) % len(rows) : (2 * i) % len(rows) + 2]:
                    sink(ds, row)
                i += 1
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * 0.01 - loop.time()))
        return time.process_time() - c0, loop.time() - start

    baseline_cpu, baseline_wall = await feed(lambda ds, row: None)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    try:
        rec = Recorder(_storage(data_dir, len(rows), True), maintenance_interval_s=None)
        await rec.start()
        await asyncio.sleep(STARTUP_S)
        cpu, wall = await feed(rec.record)
        c0 = time.process_time()
        await rec.close()
        cpu += time.process_time() - c0
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "recorder_cpu_share": (cpu - baseline_cpu * wall / baseline_wall) / wall,
        "feeding_loop_cpu_share": baseline_cpu / baseline_wall,
    }


# -- the comparison query over 1M requests ---------------------------------------------------

COMPARISON_SQL = """
SELECT s.target,
       count(*) AS responses,
       avg(s.latency_ms) AS mean_latency_ms,
       quantile_cont(s.latency_ms, 0.95) AS p95_latency_ms,
       1000 * avg(s.cost_usd) AS usd_per_1k,
       count(l.value) AS labelled,
       avg(CASE l.value WHEN 'true' THEN 1.0 WHEN 'false' THEN 0.0 END) AS accuracy
FROM requests r
JOIN responses s USING (request_id)
LEFT JOIN labels_latest l
       ON l.request_id = s.request_id AND l.kind = 'verdict' AND l.target = s.target
WHERE r.route = '/v1/chat/completions'
GROUP BY s.target
ORDER BY s.target
"""


def _table(ds_name: str, cols: dict[str, Any], writer: str) -> pa.Table:
    ds = DATASETS[ds_name]
    n = len(next(iter(cols.values())))
    arrays = []
    for f in ds.schema:
        if f.name == "writer":
            arrays.append(pa.array([writer] * n, f.type))
        elif f.name == "schema_version":
            arrays.append(pa.array(np.full(n, SCHEMA_VERSION, dtype=np.int32), f.type))
        elif f.name in cols:
            arrays.append(pa.array(cols[f.name], f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=ds.schema)


def build_query_lake(data_dir: Path, n_requests: int, segment_rows: int = 5000) -> None:
    """1M requests over 10 days, production + 2 candidate responses each, 1% labelled per target."""
    rng = np.random.default_rng(3)
    w = SegmentWriter(data_dir, "bench")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    per_day = n_requests // 10
    targets = ["production", "cand-a", "cand-b"]
    base_latency = {"production": 900.0, "cand-a": 600.0, "cand-b": 1400.0}
    for day in range(10):
        day_start = start + timedelta(days=day)
        for off in range(0, per_day, segment_rows):
            n = min(segment_rows, per_day - off)
            idx = np.arange(day * per_day + off, day * per_day + off + n)
            ids = [f"r{i:09d}" for i in idx]
            when = [day_start + timedelta(seconds=int(s)) for s in rng.integers(0, 86400, n)]
            req = {
                "request_id": ids,
                "received_at": when,
                "route": ["/v1/chat/completions"] * n,
                "method": ["POST"] * n,
                "model": ["gpt-4o-mini"] * n,
                "stream": (idx % 3 == 0).tolist(),
                "body": [
                    f'{{"messages":[{{"role":"user","content":"question {i}"}}]}}' for i in idx
                ],
                "session_id": [f"s{i % 5000}" for i in idx],
                "tags": [["support"]] * n,
                "sample_rate": np.full(n, 0.1),
                "mirrored": np.ones(n, dtype=bool),
            }
            day_str = day_start.strftime("%Y-%m-%d")
            w.write_table(DATASETS["requests"], day_str, _table("requests", req, "bench"))
            for t in targets:
                lat = rng.gamma(4.0, base_latency[t] / 4.0, n)
                resp = {
                    "request_id": ids,
                    "target": [t] * n,
                    "source": ["live"] * n,
                    "model": [t] * n,
                    "status": np.full(n, 200, dtype=np.int32),
                    "started_at": when,
                    "ttft_ms": lat * 0.2,
                    "latency_ms": lat,
                    "output_text": [f"answer {i}" for i in idx],
                    "finish_reason": ["stop"] * n,
                    "prompt_tokens": rng.integers(50, 500, n),
                    "completion_tokens": rng.integers(20, 400, n),
                    "cost_usd": rng.uniform(1e-5, 1e-3, n),
                    "stream": (idx % 3 == 0).tolist(),
                    "attempt": np.zeros(n, dtype=np.int32),
                }
                w.write_table(DATASETS["responses"], day_str, _table("responses", resp, "bench"))
    labelled = rng.choice(n_requests, n_requests // 100, replace=False)
    p_ok = {"production": 0.85, "cand-a": 0.82, "cand-b": 0.9}
    label_rows = []
    for t in targets:
        ok = rng.random(len(labelled)) < p_ok[t]
        label_rows += [
            {
                "label_id": new_id(),
                "request_id": f"r{i:09d}",
                "kind": "verdict",
                "target": t,
                "value": "true" if good else "false",
                "labeller": "bench",
                "source": "simulated",
                "created_at": start + timedelta(days=11),
            }
            for i, good in zip(labelled, ok, strict=True)
        ]
    w.write("labels", label_rows)


def _time_query(data_dir: Path, repeats: int) -> dict[str, Any]:
    con = connect(data_dir)
    t0 = time.perf_counter()
    result = con.execute(COMPARISON_SQL).fetchall()
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        con.execute(COMPARISON_SQL).fetchall()
        runs.append(time.perf_counter() - t0)
    files = sum(1 for _ in data_dir.glob("*/date=*/*.parquet"))
    return {
        "first_s": first,
        "median_s": statistics.median(runs),
        "min_s": min(runs),
        "max_s": max(runs),
        "segment_files": files,
        "result": [list(r) for r in result],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rows", type=int, default=200_000, help="records per throughput run")
    ap.add_argument("--cpu-seconds", type=float, default=20.0)
    ap.add_argument("--query-requests", type=int, default=1_000_000)
    ap.add_argument("--skip-query", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/results/recorder.json"))
    args = ap.parse_args()

    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores visible",
        "python": platform.python_version(),
    }
    if not args.skip_query:  # first, while DuckDB may use every core
        data_dir = Path(tempfile.mkdtemp(prefix="bench-query-"))
        try:
            t0 = time.perf_counter()
            build_query_lake(data_dir, args.query_requests)
            results["query_lake_build_s"] = time.perf_counter() - t0
            results["query_before_compaction"] = _time_query(data_dir, args.runs)
            print("query before compaction:", results["query_before_compaction"])
            t0 = time.perf_counter()
            compact(data_dir, older_than_s=0, grace_s=0)
            compact(data_dir, older_than_s=0, grace_s=0)  # deletes the superseded inputs
            results["compaction_s"] = time.perf_counter() - t0
            results["query_after_compaction"] = _time_query(data_dir, args.runs)
            print("query after compaction:", results["query_after_compaction"])
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core for all threads
    rows = make_rows(args.rows // 2)
    results["records_per_run"] = len(rows)
    for redaction in (True, False):
        runs = [asyncio.run(_throughput_once(rows, redaction)) for _ in range(args.runs)]
        key = "throughput_redaction_on" if redaction else "throughput_redaction_off"
        results[key] = {}
        for i, clock in enumerate(("wall", "cpu")):
            rates = [r[i] for r in runs]
            results[key][clock] = {
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "runs": rates,
            }
            print(
                f"{key} per {clock} second: median {statistics.median(rates):,.0f} records/s "
                f"(min {min(rates):,.0f}, max {max(rates):,.0f})"
            )
    shares = [asyncio.run(_cpu_share(rows, args.cpu_seconds, 1000)) for _ in range(3)]
    results["cpu_at_1000_req_s"] = shares
    print(f"cpu share at 1,000 req/s: {shares}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
