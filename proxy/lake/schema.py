"""The lake's datasets and their columns: the storage contract of DESIGN.md.

Columns are only ever added, never renamed or retyped. `SCHEMA_VERSION` rises with
each addition; it travels in every segment (a column and the Parquet key-value
metadata), and readers use `union_by_name`, so old segments read beside new ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 1

# Time columns: microseconds since the epoch, UTC. A row may give one as a UTC datetime or
# as that integer (what the live path records: an int is read from the clock and pickled to
# the lake writer in a third of a datetime's time).
TS = pa.timestamp("us", tz="UTC")


def now_us() -> int:
    """Now, as a time column's integer."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Dataset:
    name: str
    schema: pa.Schema
    # The column whose UTC date names the hive partition `date=YYYY-MM-DD`.
    time_column: str
    # Free-text columns that redaction applies to before anything is written.
    content_columns: tuple[str, ...] = ()


REQUESTS = Dataset(
    "requests",
    pa.schema(
        [
            ("request_id", pa.string()),
            ("received_at", TS),
            ("route", pa.string()),
            ("method", pa.string()),
            ("model", pa.string()),
            ("stream", pa.bool_()),
            ("body", pa.string()),  # redacted JSON text; null when content is omitted
            ("prompt_hash", pa.string()),  # sha256 of the raw prompt part, before redaction
            ("session_id", pa.string()),
            ("tags", pa.list_(pa.string())),
            ("sample_rate", pa.float64()),  # P(this request was mirrored)
            ("mirrored", pa.bool_()),
            ("content_omitted", pa.bool_()),
            ("writer", pa.string()),
            ("schema_version", pa.int32()),
        ]
    ),
    "received_at",
    ("body",),
)

RESPONSES = Dataset(
    "responses",
    pa.schema(
        [
            ("request_id", pa.string()),
            ("target", pa.string()),  # 'production' or a candidate name
            ("source", pa.string()),  # 'live' or 'replay'
            ("model", pa.string()),
            ("status", pa.int32()),  # HTTP status; null if none
            ("error", pa.string()),  # null | timeout | connect | http | invalid | dropped | budget
            ("error_detail", pa.string()),
            ("started_at", TS),
            ("ttft_ms", pa.float64()),
            ("latency_ms", pa.float64()),
            ("output_text", pa.string()),
            ("finish_reason", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("cost_usd", pa.float64()),
            ("logprobs", pa.string()),  # JSON text or null
            ("stream", pa.bool_()),
            ("attempt", pa.int32()),  # replay repeat index; 0 for live traffic
            ("writer", pa.string()),
            ("schema_version", pa.int32()),
        ]
    ),
    "started_at",
    ("output_text", "logprobs"),
)

LABELS = Dataset(
    "labels",
    pa.schema(
        [
            ("label_id", pa.string()),
            ("request_id", pa.string()),
            ("kind", pa.string()),  # reference | verdict | preference | outcome
            ("target", pa.string()),  # null unless the label judges one output
            ("value", pa.string()),  # JSON text
            ("labeller", pa.string()),
            ("source", pa.string()),  # human | system | judge | simulated
            ("created_at", TS),
            ("writer", pa.string()),
            ("schema_version", pa.int32()),
        ]
    ),
    "created_at",
)

EVAL_SETS = Dataset(
    "eval_sets",
    pa.schema(
        [
            ("eval_set", pa.string()),
            ("request_id", pa.string()),
            ("stratum", pa.string()),
            ("inclusion_prob", pa.float64()),
            ("created_at", TS),
            ("writer", pa.string()),
            ("schema_version", pa.int32()),
        ]
    ),
    "created_at",
)

DATASETS: dict[str, Dataset] = {d.name: d for d in (REQUESTS, RESPONSES, LABELS, EVAL_SETS)}

LABEL_KINDS = ("reference", "verdict", "preference", "outcome")
LABEL_SOURCES = ("human", "system", "judge", "simulated")
ERROR_KINDS = ("timeout", "connect", "http", "invalid", "dropped", "budget")
RESPONSE_SOURCES = ("live", "replay")
PRODUCTION = "production"


def dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
