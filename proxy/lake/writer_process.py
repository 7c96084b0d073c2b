"""A recorder whose lake writing runs in a process of its own (`storage.writer_process`).

The live process keeps only the cheap part: `record()` appends to a list, and every
SEND_EVERY_S (or SEND_ROWS rows) the list is pickled (about 1 us a row) and written to a
pipe. Converting rows to Arrow, redaction, Parquet and compaction - 10-20 us a row, most
of it holding the GIL - run in `proxy.lake.writer_child`, so they no longer stall the event
loop that serves production, and on a machine with a free core they run beside it.

Same contract as the in-process `Recorder`: `record()` never blocks and returns False when
the row is dropped; what both processes hold together is bounded by
`storage.buffer_max_rows`; every loss is counted in `shadoweval_recorder_dropped_total`.
The writer's own counters (rows and segments written, flush time, write errors) are
reported over the pipe and served on this process's /metrics. More on failure:
- the writer dies (killed, out of memory): the rows it had not confirmed are counted as
  dropped with reason `writer_died` (some may have reached the lake), an error is logged
  and a new writer is started; rows recorded meanwhile wait here, within the bound;
- this process is SIGKILLed: the writer sees its pipe end, flushes what it received and
  exits, so only the last SEND_EVERY_S of rows is lost;
- `close()` sends what is left, closes the pipe and waits for the writer's last report;
  a writer that has not ended CLOSE_TIMEOUT_S later is killed and its rows counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pickle
import sys
import time
from collections import Counter, deque
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from proxy.config import LoggingSettings, StorageSettings
from proxy.lake.recorder import DROP_WARN_INTERVAL_S
from proxy.lake.recorder_metrics import DROPPED, WRITTEN, WriterMetrics
from proxy.lake.schema import DATASETS
from proxy.lake.writer import check_writer_id, default_writer_id
from proxy.lake.writer_child import frame, read_frame
from proxy.tasks import TaskSet

log = structlog.get_logger("shadoweval.recorder")

SEND_EVERY_S = 0.05
SEND_ROWS = 256  # rows per frame
SEND_FRAMES = 8  # frames per send at most: a backlog is worked off without stalling the loop
# Rows in the kernel's pipe survive a SIGKILL of this process; rows in our buffer do not.
PIPE_BYTES = 1 << 20
WRITER_START_S = 30.0
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_S = 60.0  # a writer up this long was healthy: the next restart starts the backoff over
CLOSE_RESTARTS = 3
CLOSE_TIMEOUT_S = 60.0


class ProcessRecorder:
    """The `Recorder` interface; the rows are written by a `writer_child` process."""

    def __init__(
        self,
        storage: StorageSettings,
        *,
        writer_id: str | None = None,
        registry: CollectorRegistry | None = None,
        maintenance_interval_s: float | None = 600.0,
        logging: LoggingSettings | None = None,
    ) -> None:
        self.storage = storage
        self.data_dir = storage.data_dir
        self.writer_id = check_writer_id(
            writer_id or storage.writer_id or default_writer_id("proxy")
        )
        # The writer's settings travel as its first frame (not argv: no size limit, not in ps).
        self._config = {
            "storage": storage.model_dump(mode="json"),
            "writer_id": self.writer_id,
            "maintenance_interval_s": maintenance_interval_s,
            "logging": (logging or LoggingSettings()).model_dump(mode="json"),
        }
        self._max = storage.buffer_max_rows
        self._pending: deque[tuple[str, dict[str, Any]]] = deque()
        self._sent: Counter[str] = Counter()  # rows given to the current writer, by dataset
        self._pipe: asyncio.WriteTransport | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.writer_pid: int | None = None  # the running writer process, if any
        self._closing = self._closed = False
        self._tasks = TaskSet("lake-writer")
        self._supervisor: asyncio.Task[None] | None = None
        self._unwarned, self._last_warning = 0, float("-inf")
        self._up = asyncio.Event()  # set at the first report of the first writer
        self._stop = asyncio.Event()  # set by close(): cuts a restart backoff short
        self.metrics = WriterMetrics()
        (registry if registry is not None else CollectorRegistry()).register(self.metrics)

    def _count_held(self) -> None:
        """Rows here plus rows the current writer has not yet written or dropped."""
        released = sum(self._released(name) for name in self._sent)
        self.metrics.held = len(self._pending) + sum(self._sent.values()) - int(released)

    def _released(self, dataset: str) -> float:
        """Rows of `dataset` the current writer no longer holds: written or dropped by it."""
        total = 0.0
        for family, (_, _, samples) in self.metrics.current.items():
            if family in (WRITTEN, DROPPED):
                for (_, labels), value in samples.items():
                    if dict(labels).get("dataset") == dataset:
                        total += value
        return total

    def handed_over(self) -> bool:
        """Every row recorded so far is in the writer's pipe or beyond (safe from our SIGKILL)."""
        pipe = self._pipe
        return not self._pending and pipe is not None and pipe.get_write_buffer_size() == 0

    async def start(self) -> None:
        """Start the writer process and wait (bounded) until it is up; idempotent.

        Waiting keeps the writer's start-up (about a second of imports) out of the first
        requests' way. A writer that is not up in WRITER_START_S is logged, and rows wait
        here for it, within the bound.
        """
        if self._supervisor is None and not self._closing:
            self._supervisor = self._tasks.spawn(self._supervise(), "supervisor")
            self._tasks.spawn(self._send_every(), "sender")
        try:
            await asyncio.wait_for(self._up.wait(), WRITER_START_S)
        except TimeoutError:
            log.warning("lake writer not up yet; rows wait for it", waited_s=WRITER_START_S)

    def record(self, dataset: str, row: dict[str, Any]) -> bool:
        """Queue one row of `dataset` for the writer; False when it was dropped."""
        if dataset not in DATASETS:
            raise KeyError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        if self._closed or self.metrics.held >= self._max:
            self._drop(dataset, "closed" if self._closed else "buffer_full")
            return False
        self._pending.append((dataset, row))
        self.metrics.held += 1
        if len(self._pending) >= SEND_ROWS:
            self._send(frames=1)
        return True

    def _drop(self, dataset: str, reason: str, n: int = 1) -> None:
        self.metrics.dropped[(dataset, reason)] += n
        self._unwarned += n
        now = time.monotonic()
        if now - self._last_warning >= DROP_WARN_INTERVAL_S:
            log.warning("recorder dropped rows", dropped=self._unwarned, reason=reason,
                        held=self.metrics.held, buffer_max_rows=self._max)  # fmt: skip
            self._unwarned, self._last_warning = 0, now

    def _send(self, frames: int = SEND_FRAMES) -> None:
        """Hand up to `frames` frames of pending rows to the writer; never raises.

        Nothing happens while no writer runs: the rows wait here, within the bound.
        """
        pending = self._pending
        for _ in range(frames):
            pipe = self._pipe
            if not pending or pipe is None or pipe.is_closing():
                return
            chunk = [pending.popleft() for _ in range(min(SEND_ROWS, len(pending)))]
            data, kept = self._frame(chunk)
            if data:
                pipe.write(data)
                self._sent.update(dataset for dataset, _ in kept)

    def _frame(
        self, chunk: list[tuple[str, dict[str, Any]]]
    ) -> tuple[bytes, list[tuple[str, dict[str, Any]]]]:
        """The chunk as one frame; a row pickle cannot carry is dropped (counted) alone."""
        try:
            return frame(chunk), chunk
        except Exception:
            pass
        kept = []
        for dataset, row in chunk:
            try:
                pickle.dumps(row)
            except Exception as exc:
                self._drop(dataset, "invalid")
                self.metrics.held -= 1
                log.error("row not recordable", dataset=dataset, error=repr(exc))
            else:
                kept.append((dataset, row))
        try:
            return (frame(kept) if kept else b""), kept
        except Exception as exc:  # e.g. a frame over 4 GiB: never expected, still counted
            for dataset, _ in kept:
                self._drop(dataset, "invalid")
            self.metrics.held -= len(kept)
            log.error("rows not recordable", rows=len(kept), error=repr(exc))
            return b"", []

    async def _send_all(self) -> None:
        """Send every pending row, yielding to the loop between batches of frames."""
        while self._pending and self._pipe is not None and not self._pipe.is_closing():
            self._send()
            await asyncio.sleep(0)

    async def _send_every(self) -> None:
        while True:
            await asyncio.sleep(SEND_EVERY_S)
            self._send()

    async def _supervise(self) -> None:
        """Run a writer; when it dies, count what it held and start another."""
        loop = asyncio.get_running_loop()
        failures = restarts_closing = 0
        while True:
            started = loop.time()
            clean = False
            try:
                clean = await self._run_writer()
            except Exception as exc:
                log.error("lake writer failed", error=f"{type(exc).__name__}: {exc}")
            self._settle()
            if self._closing:
                if clean or not self._pending or restarts_closing >= CLOSE_RESTARTS:
                    return
                restarts_closing += 1
            if loop.time() - started >= STABLE_S:
                failures = 0
            failures += 1
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S)) - 1]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_writer(self) -> bool:
        """One writer process from start to exit; True when it ended with its last report."""
        loop = asyncio.get_running_loop()
        rows_r, rows_w = os.pipe()
        with contextlib.suppress(AttributeError, OSError):  # Linux: hold more in the kernel
            fcntl.fcntl(rows_w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        stats_r, stats_w = os.pipe()
        rows_file = os.fdopen(rows_w, "wb", buffering=0)
        stats_file = os.fdopen(stats_r, "rb", buffering=0)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.lake.writer_child", str(rows_r), str(stats_w),
                pass_fds=(rows_r, stats_w), stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C or a signal to our group is not for it
            )  # fmt: skip
        except BaseException:
            rows_file.close()
            stats_file.close()
            raise
        finally:
            os.close(rows_r)
            os.close(stats_w)
        self._proc, self.writer_pid = proc, proc.pid
        log.info("lake writer started", pid=proc.pid, writer=self.writer_id)
        pipe: asyncio.WriteTransport | None = None
        done = False
        try:
            reader = asyncio.StreamReader(limit=2**31)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stats_file)
            pipe, _ = await loop.connect_write_pipe(asyncio.Protocol, rows_file)
            pipe.write(frame(self._config))
            self._pipe = pipe
            if self._closing:
                await self._send_all()
                pipe.close()
            else:
                self._send()
            while True:
                try:
                    report = await read_frame(reader)
                except asyncio.IncompleteReadError:
                    break
                self.metrics.current = report["snapshot"]
                done = report["done"]
                self._up.set()
                self._count_held()
        finally:
            self._pipe = None
            if pipe is not None:
                pipe.close()
            else:
                rows_file.close()
                stats_file.close()
            code = await proc.wait()
            self._proc = self.writer_pid = None
        if not done or code != 0:
            log.error("lake writer exited", exitcode=code, pid=proc.pid)
        return done and code == 0

    def _settle(self) -> None:
        """A writer ended: rows it never confirmed are lost (or of unknown fate)."""
        lost = {name: n - int(self._released(name)) for name, n in self._sent.items()}
        for name, n in lost.items():
            if n > 0:
                self._drop(name, "writer_died", n)
                log.error("rows given to the lake writer not confirmed", dataset=name, rows=n)
        self.metrics.retire()
        self._sent.clear()
        self.metrics.held = len(self._pending)

    async def close(self) -> None:
        """Send every row, let the writer flush and exit; idempotent.

        A writer still running CLOSE_TIMEOUT_S later (a hung disk) is killed, and the rows
        it had not confirmed are counted as `writer_died`.
        """
        if not self._closing:
            self._closing = self._closed = True
            self._stop.set()
            if self._pipe is not None:
                await self._send_all()
                if self._pipe is not None:
                    self._pipe.close()
            elif self._supervisor is None and self._pending:  # never started: a writer for these
                self._supervisor = self._tasks.spawn(self._supervise(), "supervisor")
        if self._supervisor is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._supervisor), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.error("lake writer did not end; killed", timeout_s=CLOSE_TIMEOUT_S)
                if self._proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._supervisor), 10.0)
            except Exception:
                pass
        for dataset, _ in self._pending:
            self._drop(dataset, "write_failed")
        if self._pending:
            log.error("rows lost: no lake writer could be run", rows=len(self._pending))
        self._pending.clear()
        self.metrics.held = 0
        await self._tasks.cancel_all()
