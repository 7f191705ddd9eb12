"""Helpers for plugins that wait on slow checks: share one call per key, remember answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class SingleFlight:
    """Concurrent requests asking the same thing (same credential, same token) share one call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.calls: dict[Any, asyncio.Task] = {}

    async def run(self, key: Any, call: Callable[[], Awaitable[Any]]) -> Any:
        task = self.calls.get(key)
        if task is None:
            task = self.calls[key] = self.loop.create_task(call())
            task.add_done_callback(lambda _: self.calls.pop(key, None))
        return await asyncio.shield(task)  # one waiter leaving does not cancel the others


class TtlCache:
    """Answers remembered until their own deadline; bounded (cleared whole when full)."""

    def __init__(self, limit: int = 10000) -> None:
        self.limit = limit
        self.entries: dict[Any, tuple[Any, float]] = {}

    def get(self, key: Any, now: float) -> Any:
        found = self.entries.get(key)
        if found is None:
            return None
        if found[1] <= now:
            del self.entries[key]
            return None
        return found[0]

    def put(self, key: Any, value: Any, until: float) -> None:
        if len(self.entries) >= self.limit:
            self.entries.clear()
        self.entries[key] = (value, until)
