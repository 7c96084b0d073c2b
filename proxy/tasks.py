"""Background tasks with an owner: kept referenced, named, and their failures logged.

A task nobody keeps a reference to may be garbage-collected mid-flight, and its exception
is lost; every background coroutine goes through `TaskSet.spawn` instead, and a fixed pool
of workers through `run_all`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog

log = structlog.get_logger("shadoweval.tasks")


class TaskSet:
    """A set of running tasks that can be awaited or cancelled together."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "background task failed",
                task=task.get_name(),
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )

    async def wait(self, within_s: float | None) -> bool:
        """Wait for every task to finish; True if all did within `within_s` seconds."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=within_s)
        return not pending

    async def cancel_all(self) -> None:
        tasks = set(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def run_all(name: str, coros: Sequence[Coroutine[Any, Any, Any]]) -> None:
    """Run coroutines (a pool of workers) as named tasks and wait for all of them.

    The first failure is raised as it is, after the others are cancelled; cancelling the
    caller cancels them all. Nothing is left running when this returns or raises.
    """
    tasks = TaskSet(name)
    running = [tasks.spawn(coro, str(i)) for i, coro in enumerate(coros)]
    try:
        await asyncio.gather(*running)
    finally:
        await tasks.cancel_all()
