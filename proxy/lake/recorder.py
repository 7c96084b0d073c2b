"""The recorder: the proxy hands it rows without waiting; a background flusher writes segments.

`record()` appends to an in-memory buffer and returns - O(1), no lock, no disk, no regex -
so the request path never waits for storage. It must be called from the event loop's
thread. A flusher task writes each dataset's buffer as a segment when it reaches
`storage.flush_rows` rows, and every buffer at least every `storage.flush_interval_s`; the
conversion, redaction and Parquet writing run in the recorder's own worker thread.

Bounds and losses, all counted, none silent:
- `storage.buffer_max_rows` caps rows held in memory (buffered, being written or waiting
  for a retry); past it `record()` drops the row, returns False, counts it in
  `shadoweval_recorder_dropped_total{reason="buffer_full"}` and logs a rate-limited warning;
- a failed write (disk full, permissions) is retried with backoff, the rows staying in memory;
- a row whose value cannot be converted to its column's type is dropped (`reason="invalid"`);
- `close()` flushes everything; rows it still cannot write after a few attempts are counted
  (`reason="write_failed"`) and logged as an error. A SIGKILL loses at most the rows of the
  last flush interval plus the write in progress.

The proxy runs this recorder in a lake-writer process of its own by default
(`proxy/lake/writer_process.py`), so the conversion and writing stay off its event loop's
GIL; elsewhere (tools, tests, `storage.writer_process: false`) it runs in the caller's process.

The recorder also refreshes `catalog.duckdb` once at start and, every
`maintenance_interval_s`, compacts small segments and applies `storage.retention_days`
(one process per host at a time, through the dataset's maintenance lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry

from proxy.config import StorageSettings
from proxy.lake import catalog
from proxy.lake.compaction import compact
from proxy.lake.recorder_metrics import RecorderMetrics
from proxy.lake.redaction import Redactor
from proxy.lake.rows import Prepared, TableBuilder
from proxy.lake.schema import DATASETS
from proxy.lake.writer import SegmentWriter, default_writer_id
from proxy.tasks import TaskSet

log = structlog.get_logger("shadoweval.recorder")

DROP_WARN_INTERVAL_S = 10.0
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
CLOSE_ATTEMPTS = 3
CATALOG_WAIT_S = 30.0
# Fast to write on the request-serving host; compaction later rewrites segments as zstd.
LIVE_COMPRESSION = "snappy"


class LakeRecorder(Protocol):
    """What the proxy needs of a recorder: this module's, or the lake-writer process's."""

    @property
    def writer_id(self) -> str: ...

    def record(self, dataset: str, row: dict[str, Any]) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class _FlushResult:
    written: Counter[str] = field(default_factory=Counter)
    segments: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    failed: list[Prepared] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Recorder:
    """Bounded in-memory buffer per dataset plus a background flusher writing Parquet segments."""

    def __init__(
        self,
        storage: StorageSettings,
        *,
        writer_id: str | None = None,
        registry: CollectorRegistry | None = None,
        maintenance_interval_s: float | None = 600.0,
    ) -> None:
        self.storage = storage
        self.data_dir = storage.data_dir
        wid = writer_id or storage.writer_id or default_writer_id("proxy")
        self.writer = SegmentWriter(self.data_dir, wid, compression=LIVE_COMPRESSION)
        self.builder = TableBuilder(
            self.writer.writer_id,
            Redactor.from_settings(storage.redaction),
            store_content=storage.store_content,
        )
        self._max = storage.buffer_max_rows
        self._flush_rows = storage.flush_rows
        self._buffers: dict[str, list[dict[str, Any]]] = {name: [] for name in DATASETS}
        self._held = 0
        self._retry: list[tuple[float, Prepared]] = []
        self._wake = asyncio.Event()
        self._tasks = TaskSet("recorder")
        self._flusher: asyncio.Task[None] | None = None
        self._catalog_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder-flush")
        self._maintenance_interval_s = maintenance_interval_s
        self._unwarned_drops = 0
        self._drop_reason = "buffer_full"
        self._last_drop_warning = float("-inf")
        self.metrics = RecorderMetrics(registry if registry is not None else CollectorRegistry())
        self.metrics.buffered.set_function(lambda: self._held)

    @property
    def writer_id(self) -> str:
        return self.writer.writer_id

    async def start(self) -> None:
        """Start the flusher (and catalog refresh and maintenance); idempotent."""
        if self._flusher is not None or self._closing:
            return
        self._flusher = self._tasks.spawn(self._run(), "flusher")
        self._catalog_task = self._tasks.spawn(self._refresh_catalog(), "catalog")
        if self._maintenance_interval_s:
            self._tasks.spawn(self._maintain(self._maintenance_interval_s), "maintenance")

    def record(self, dataset: str, row: dict[str, Any]) -> bool:
        """Buffer one row of `dataset`; False when it was dropped (buffer full or closed).

        The recorder takes the dict over: do not change it afterwards.
        """
        buf = self._buffers.get(dataset)
        if buf is None:
            raise KeyError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        if self._closed or self._held >= self._max:
            self._drop(dataset, "closed" if self._closed else "buffer_full")
            return False
        buf.append(row)
        self._held += 1
        if len(buf) >= self._flush_rows and not self._wake.is_set():
            self._wake.set()
        return True

    def _drop(self, dataset: str, reason: str, n: int = 1) -> None:
        self.metrics.dropped.labels(dataset=dataset, reason=reason).inc(n)
        self._unwarned_drops += n
        self._drop_reason = reason
        self._warn_drops()

    def _warn_drops(self) -> None:
        """At most one warning per DROP_WARN_INTERVAL_S, counting the drops since the last."""
        now = time.monotonic()
        if self._unwarned_drops and now - self._last_drop_warning >= DROP_WARN_INTERVAL_S:
            log.warning(
                "recorder dropped rows",
                dropped=self._unwarned_drops,
                reason=self._drop_reason,
                held=self._held,
                buffer_max_rows=self._max,
            )
            self._unwarned_drops = 0
            self._last_drop_warning = now

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.storage.flush_interval_s
        next_full = loop.time() + interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_full - loop.time()))
            self._wake.clear()
            if self._closing:
                break
            full = loop.time() >= next_full
            if full:
                next_full = loop.time() + interval
            try:
                await self._flush(full=full)
            except Exception as exc:  # never let the flusher die; rows stay counted in _held
                log.error("recorder flush failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)
            self._warn_drops()

    async def _flush(self, *, full: bool, all_retries: bool = False) -> None:
        batches: dict[str, list[dict[str, Any]]] = {}
        for name, buf in self._buffers.items():
            if buf and (full or len(buf) >= self._flush_rows):
                batches[name] = buf
                self._buffers[name] = []
        now = time.monotonic()
        due = [p for t, p in self._retry if all_retries or t <= now]
        self._retry = [(t, p) for t, p in self._retry if not (all_retries or t <= now)]
        if not batches and not due:
            return
        for name, rows in batches.items():
            self.metrics.records.labels(dataset=name).inc(len(rows))
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, self._write, batches, due)
        self.metrics.flush_seconds.observe(time.perf_counter() - started)
        self._account(result)

    def _write(self, batches: dict[str, list[dict[str, Any]]], due: list[Prepared]) -> _FlushResult:
        """Runs in the flush thread: convert, redact and write; never raises."""
        res = _FlushResult()
        pending = list(due)
        for name, rows in batches.items():
            try:
                parts, rejected = self.builder.prepare(DATASETS[name], rows)
            except Exception as exc:
                log.error(
                    "rows could not be prepared", dataset=name, rows=len(rows), error=repr(exc)
                )
                res.invalid[name] += len(rows)
                continue
            if rejected.count:
                log.error(
                    "rows with unconvertible values dropped",
                    dataset=name,
                    rows=rejected.count,
                    columns=rejected.reasons,
                )
                res.invalid[name] += rejected.count
            pending.extend(parts)
        for p in pending:
            try:
                self.writer.write_table(DATASETS[p.dataset], p.day, p.table)
            except Exception as exc:
                p.attempts += 1
                res.failed.append(p)
                res.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                res.written[p.dataset] += p.table.num_rows
                res.segments[p.dataset] += 1
        return res

    def _account(self, res: _FlushResult) -> None:
        for name, n in res.written.items():
            self._held -= n
            self.metrics.written.labels(dataset=name).inc(n)
            self.metrics.segments.labels(dataset=name).inc(res.segments[name])
        for name, n in res.invalid.items():
            self._held -= n
            self.metrics.dropped.labels(dataset=name, reason="invalid").inc(n)
        if res.failed:
            self.metrics.flush_errors.inc(len(res.failed))
            now = time.monotonic()
            for p in res.failed:
                delay = RETRY_BACKOFF_S[min(p.attempts, len(RETRY_BACKOFF_S)) - 1]
                self._retry.append((now + delay, p))
            log.error(
                "segment write failed; rows kept for retry",
                segments=len(res.failed),
                rows=sum(p.table.num_rows for p in res.failed),
                error=res.errors[0],
            )

    async def close(self) -> None:
        """Flush every recorded row and stop; idempotent (later calls wait for the first)."""
        if self._close_task is None:
            # Its own set: closing cancels `self._tasks`, which must not include itself.
            self._close_task = TaskSet("recorder-close").spawn(self._close(), "close")
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher
        self._closed = True
        for attempt in range(CLOSE_ATTEMPTS):
            with contextlib.suppress(Exception):
                await self._flush(full=True, all_retries=True)
            if not self._retry and not any(self._buffers.values()):
                break
            await asyncio.sleep(RETRY_BACKOFF_S[attempt])
        self._give_up()
        if self._catalog_task is not None:
            # Cancelling would leave its thread writing catalog.duckdb after close() returned.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._catalog_task), CATALOG_WAIT_S)
        await self._tasks.cancel_all()
        self._executor.shutdown(wait=True)
        self._warn_drops()

    def _give_up(self) -> None:
        lost: Counter[str] = Counter()
        for _, p in self._retry:
            lost[p.dataset] += p.table.num_rows
        for name, buf in self._buffers.items():
            if buf:
                lost[name] += len(buf)
                buf.clear()
        self._retry = []
        for name, n in lost.items():
            self._held -= n
            self.metrics.dropped.labels(dataset=name, reason="write_failed").inc(n)
            log.error("rows lost: the lake could not be written at shutdown", dataset=name, rows=n)

    async def _refresh_catalog(self) -> None:
        try:
            await asyncio.to_thread(catalog.refresh, self.data_dir)
        except Exception as exc:
            log.warning("catalog.duckdb not refreshed", error=f"{type(exc).__name__}: {exc}")

    async def _maintain(self, interval_s: float) -> None:
        while not self._closing:
            await asyncio.sleep(interval_s)
            try:
                report = await asyncio.to_thread(
                    compact,
                    self.data_dir,
                    older_than_s=self.storage.compact_after_s,
                    retention_days=self.storage.retention_days,
                    lock_timeout_s=0.0,
                    should_stop=lambda: self._closing,
                )
                if report.changed:
                    log.info("lake maintenance", **report.summary())
            except Exception as exc:
                log.error("lake maintenance failed", error=f"{type(exc).__name__}: {exc}")
