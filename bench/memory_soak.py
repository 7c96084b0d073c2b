"""Resident memory of one proxy process over a long run against candidates that are down.

10% of requests are mirrored to 2 candidates whose port refuses connections: every shadow
call fails to connect and becomes a `connect` error row, so nothing may pile up - not
queued calls, not buffered rows, not tasks. `hey` sends a fixed rate while the proxy's RSS
is sampled every `--every` seconds. "Flat" here means: after the first minute (imports,
pools, first segments written), the median RSS of the last third of the run is within 5%
of the median of the first third, and a least-squares line through the second half of
the samples rises by less than 1 MiB per 10 minutes (a leak keeps rising; a one-off step
does not). At the end the lake is counted to confirm every mirrored request left one
row per candidate.

Usage: python -m bench.memory_soak [--minutes 10] [--rate 200] [--every 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.proxy_overhead import (
    BODY,
    ensure_tools,
    free_port,
    lake_counts,
    machine,
    nginx,
    pin_to_load_cpu,
    proxy,
    rss_kib,
    start_load,
    warm_up,
)

SETTLE_S = 60.0
MAX_GROWTH = 0.05
MAX_SLOPE_MIB_PER_10MIN = 1.0


def slope_mib_per_10min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS (KiB) over time (s), as MiB per 10 minutes."""
    xs = [t for t, _ in samples]
    ys = [r for _, r in samples]
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return (sxy / sxx) * 600 / 1024 if sxx else 0.0


def status_counts(hey_summaries: str) -> dict[str, int]:
    """Answers per HTTP status, summed over the hey workers' summaries ("[200]\t123 responses")."""
    counts: dict[str, int] = {}
    for m in re.finditer(r"\[(\d+)\]\s+(\d+) responses", hey_summaries):
        counts[m.group(1)] = counts.get(m.group(1), 0) + int(m.group(2))
    return counts


def verdict(samples: list[tuple[float, int]]) -> dict[str, Any]:
    """First-third vs last-third median and the trends, all after the settling minute.

    A leak keeps rising to the end; a one-off step (an allocator arena, a bigger flush)
    does not. So the trend that decides is the one over the second half of the run.
    """
    settled = [(t, r) for t, r in samples if t >= SETTLE_S] or samples
    rss = [r for _, r in settled]
    third = max(1, len(rss) // 3)
    first = statistics.median(rss[:third]) / 1024
    last = statistics.median(rss[-third:]) / 1024
    second_half = [(t, r) for t, r in samples if t >= samples[-1][0] / 2]
    late_slope = slope_mib_per_10min(second_half)
    return {
        "start_mib": samples[0][1] / 1024,
        "peak_mib": max(r for _, r in samples) / 1024,
        "end_mib": samples[-1][1] / 1024,
        "first_third_median_mib": first,
        "last_third_median_mib": last,
        "growth": last / first - 1,
        "slope_mib_per_10min": slope_mib_per_10min(settled),
        "second_half_slope_mib_per_10min": late_slope,
        "flat": last / first - 1 <= MAX_GROWTH and late_slope < MAX_SLOPE_MIB_PER_10MIN,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--every", type=float, default=5, help="seconds between RSS samples")
    ap.add_argument("--out", type=Path, default=Path("bench/results/memory_soak.json"))
    args = ap.parse_args()
    ensure_tools()
    pin_to_load_cpu()
    work = Path(tempfile.mkdtemp(prefix="shadoweval-soak-"))
    body_file = work / "body.json"
    body_file.write_text(BODY)
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    samples: list[tuple[float, int]] = []
    info = machine()
    with nginx(free_port(), work) as prod, proxy(prod, [down, down], 0.1, work) as p:
        warm_up(p.url, body_file)
        seconds = args.minutes * 60
        load = start_load(p.url, seconds, args.rate, body_file, csv_out=False)
        start = time.monotonic()
        while any(proc.poll() is None for proc in load):
            samples.append((round(time.monotonic() - start, 1), rss_kib(p.pid)))
            print(f"t={samples[-1][0]:>6}s rss={samples[-1][1] / 1024:.1f} MiB", flush=True)
            time.sleep(args.every)
        hey_summary = "".join(proc.communicate()[0] for proc in load)
        samples.append((round(time.monotonic() - start, 1), rss_kib(p.pid)))
    info["loadavg_end"] = os.getloadavg()
    summary: dict[str, Any] = {
        "minutes": args.minutes,
        "rate": args.rate,
        "machine": info,
        **verdict(samples),
        "status_codes": status_counts(hey_summary),
        "lake": lake_counts(p.lake),
        "samples": samples,
    }
    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
