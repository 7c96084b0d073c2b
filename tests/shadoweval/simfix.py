"""Shared helpers for the simulator tests: quick scenarios and concurrent SDK calls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

import yaml
from openai.types.chat import ChatCompletionMessageParam

from shadoweval.simulator.scenario import Scenario, default_scenario_text, parse_scenario
from shadoweval.simulator.task import Ticket

T = TypeVar("T")


def chat(request: Ticket | list[dict[str, str]]) -> list[ChatCompletionMessageParam]:
    """Chat messages typed as the SDK wants them: a ticket's, or given ones."""
    messages = request.messages() if isinstance(request, Ticket) else request
    return cast(list[ChatCompletionMessageParam], messages)


def default_data(**top: Any) -> dict[str, Any]:
    """The embedded default scenario as a mapping, with top-level overrides."""
    data: dict[str, Any] = yaml.safe_load(default_scenario_text())
    data.update(top)
    return data


def quiet_default(time_scale: float = 0.01) -> Scenario:
    """The default scenario, fast, without injected errors or timeouts."""
    data = default_data(time_scale=time_scale)
    for m in data["models"]:
        if "like" not in m:
            m["error_rate"] = 0.0
            m["timeout_rate"] = 0.0
    return parse_scenario(data)


def one_model(**model: Any) -> Scenario:
    """A small fast scenario with one model named 'm' (a 500-ticket task)."""
    spec = {"name": "m", "accuracy": 0.8, **model}
    data = {"seed": 0, "time_scale": 0.01, "hang_s": 5, "task": {"size": 500}, "models": [spec]}
    return parse_scenario(data)


async def gather_limited(
    items: Iterable[T], call: Callable[[T], Awaitable[Any]], limit: int = 32
) -> list[Any]:
    """Run `call` on every item with at most `limit` in flight; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with sem:
            return await call(item)

    return await asyncio.gather(*(one(i) for i in items))
