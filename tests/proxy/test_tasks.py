"""Background tasks are owned: failures surface, nothing is left running."""

import asyncio

import pytest

from proxy.tasks import TaskSet, run_all


async def test_run_all_raises_the_first_failure_as_is_and_cancels_the_rest():
    cancelled = asyncio.Event()

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise KeyError("boom")

    async def waits() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(KeyError, match="boom"):
        await run_all("t", [fails(), waits()])
    assert cancelled.is_set()
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("t:")] == []


async def test_cancelling_the_caller_cancels_every_worker():
    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        await asyncio.sleep(60)

    outer = asyncio.get_running_loop().create_task(run_all("c", [waits(), waits()]))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("c:")] == []


async def test_spawned_tasks_are_kept_until_done_and_waited_for():
    tasks = TaskSet("s")
    tasks.spawn(asyncio.sleep(0.01), "a")
    assert len(tasks) == 1
    assert await tasks.wait(within_s=5)
    assert len(tasks) == 0
