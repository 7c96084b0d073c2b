"""Figures over all recorded calls: NULLs stay missing, never become zeros."""

from datetime import UTC, datetime

from analysis.traffic import traffic_figures
from proxy.lake.reader import connect
from proxy.lake.writer import write_rows


def test_missing_ttft_of_non_streamed_calls_is_not_zero(tmp_path):
    now = datetime.now(UTC)
    rows = [
        {"request_id": "a", "target": "production", "source": "live", "started_at": now,
         "latency_ms": 100.0, "ttft_ms": 40.0, "cost_usd": 0.001, "stream": True},
        {"request_id": "b", "target": "production", "source": "live", "started_at": now,
         "latency_ms": 200.0, "ttft_ms": None, "cost_usd": None, "stream": False},
    ]  # fmt: skip
    write_rows(tmp_path, "responses", rows)
    fig = traffic_figures(connect(tmp_path))["production"]
    assert fig.ttft_ms.tolist() == [40.0]
    assert fig.latency_ms.tolist() == [100.0, 200.0]
    assert fig.cost_usd.tolist() == [0.001]
