"""The lake writer process: receives rows from the live process over a pipe, writes segments.

Started by `proxy.lake.writer_process.ProcessRecorder` as
`python -m proxy.lake.writer_child ROWS_FD STATS_FD`; its settings are the first frame on
ROWS_FD (storage, writer id, maintenance interval, logging). It runs an ordinary
`Recorder` (buffering, flushing, retries, compaction, all as in-process), fed by frames read
from ROWS_FD, and reports its counters on STATS_FD twice a second, so the live process can
serve them on /metrics and bound what the two processes hold together.

It ends when ROWS_FD reaches its end: the live process closed it at shutdown, or died.
Either way every row received is flushed first (a SIGKILL of the live process loses only the
rows it had not yet sent). SIGINT and SIGTERM are ignored: a Ctrl-C or a SIGTERM sent to the
whole process group must not cut the flush short; the live process decides when it ends.

Frames, both ways: a 4-byte big-endian length, then a pickle. Live -> writer: the settings,
then lists of (dataset, row) pairs. Writer -> live: {"snapshot": ..., "done": bool}, where the snapshot maps
each recorder metric family to (type, help, {(sample, labels): value}).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import struct
import sys
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from proxy.config import LoggingSettings, StorageSettings

log = structlog.get_logger("shadoweval.lake_writer")

HEADER = struct.Struct(">I")
STATS_EVERY_S = 0.5
# Where it shares a CPU with the proxy, the proxy's event loop is served first (the kernel
# favours it when it wakes), yet the writer keeps about a quarter of a contended CPU: enough
# for rows at the proxy's full rate (10-20 us a row).
NICE = 5
# Flushing what is left at the end may take this long (retries included) before we give up.
CLOSE_LIMIT_S = 120.0
# Metric families are cumulative counters and histograms, plus this gauge of rows held.
BUFFERED = "shadoweval_recorder_buffered_rows"

Snapshot = dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]


def frame(obj: Any) -> bytes:
    """One message as bytes on the wire."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message; raises asyncio.IncompleteReadError at the end of the pipe."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """Every sample of the registry, by family (`_created` timestamps left out)."""
    out: Snapshot = {}
    for family in registry.collect():
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        }
        out[family.name] = (family.type, family.documentation, samples)
    return out


async def open_pipes(rows_fd: int, stats_fd: int) -> tuple[asyncio.StreamReader, Any]:
    """ROWS_FD as a stream reader, STATS_FD as a write transport, on the running loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**31)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rows_fd, "rb", buffering=0)
    )
    transport, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(stats_fd, "wb", buffering=0)
    )
    return reader, transport


async def serve(rows_fd: int, stats_fd: int) -> None:
    reader, stats = await open_pipes(rows_fd, stats_fd)
    config = await read_frame(reader)
    from proxy.log import configure_logging

    configure_logging(LoggingSettings.model_validate(config["logging"]))
    structlog.contextvars.bind_contextvars(process="lake-writer")
    from proxy.lake.recorder import Recorder  # after logging is set up

    registry = CollectorRegistry()
    recorder = Recorder(
        StorageSettings.model_validate(config["storage"]),
        writer_id=config["writer_id"],
        registry=registry,
        maintenance_interval_s=config["maintenance_interval_s"],
    )
    await recorder.start()

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            stats.write(frame({"snapshot": snapshot(registry), "done": False}))

    stats.write(frame({"snapshot": snapshot(registry), "done": False}))  # up and running
    reporter = asyncio.get_running_loop().create_task(report())
    try:
        while True:
            try:
                batch = await read_frame(reader)
            except asyncio.IncompleteReadError:
                break  # the live process closed the pipe (shutdown) or is gone
            for dataset, row in batch:
                recorder.record(dataset, row)
    finally:
        reporter.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(recorder.close()), CLOSE_LIMIT_S)
        except TimeoutError:
            # A hung disk: no one may be left to kill us (the proxy may be gone), so end here.
            log.error("lake writer could not flush; exiting", waited_s=CLOSE_LIMIT_S)
            os._exit(1)
        stats.write(frame({"snapshot": snapshot(registry), "done": True}))
        # The last report must leave before the loop ends (a full pipe would keep it here).
        for _ in range(1000):
            if not stats.get_write_buffer_size():
                break
            await asyncio.sleep(0.01)
        stats.close()


def close_other_fds(keep: set[int]) -> None:
    """Close every descriptor above stderr but `keep`: uvloop's spawn passes on every
    inheritable one (a pipe of the proxy's held open here would outlive the proxy)."""
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    close_other_fds({int(args[0]), int(args[1])})
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    try:
        asyncio.run(serve(int(args[0]), int(args[1])))
    except Exception:
        log.exception("lake writer failed")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
