"""Retry budgets: retries add at most `ratio` of an upstream's request rate, plus a floor.

Linkerd's budget (20 % + 10/s over 10 s), counted across the workers of one gateway in a
shared table (fastgw/counters.py): each worker keeps its upstream's request and retry counts
as plain numbers, publishes them once a second (retries at once), and keeps a second-by-second
history of the totals; a retry is allowed while the retries of the last `WINDOW` seconds stay
within `ratio x requests + min_per_second x seconds`. A request pays one increment; only a
retry reads the table. Counts are cumulative and never go back, also when a worker is
replaced (the new one goes on from its column), so a window is a plain difference.

Only retries of requests that reached the upstream are budgeted (on a status, a timeout, a
reset): a retry after a failed connect adds no load to the upstream's application.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..counters import WorkerCounters, tag

REQUESTS, RETRIES = range(2)
FIELDS = 2
WINDOW = 10  # seconds of history
TICK = 1.0


class Budget:
    """One upstream's retry budget in this worker."""

    __slots__ = ("cells", "floor", "history", "ratio", "requests", "retries", "slot", "table")

    def __init__(
        self, name: str, settings: Any, table: WorkerCounters, worker: int, now: float
    ) -> None:
        self.table = table
        self.ratio = self.floor = 0.0
        self.configure(settings)
        self.slot = table.slot(tag("retry-budget", name))
        if self.slot < 0:
            self.cells = (-1, -1)
            self.requests = self.retries = 0
        else:
            self.cells = (
                table.cell(self.slot, REQUESTS, worker),
                table.cell(self.slot, RETRIES, worker),
            )
            # A replaced worker goes on from its predecessor's counts: totals never go back.
            self.requests = table.view[self.cells[0]]
            self.retries = table.view[self.cells[1]]
        self.history: deque[tuple[float, int, int]] = deque(maxlen=WINDOW)
        self.tick(now)

    def configure(self, settings: Any) -> None:
        self.ratio = settings.ratio
        self.floor = settings.min_per_second

    def totals(self) -> tuple[int, int]:
        if self.slot < 0:
            return self.requests, self.retries
        view = self.table.view
        view[self.cells[0]] = self.requests
        return self.table.total(self.slot, REQUESTS), self.table.total(self.slot, RETRIES)

    def tick(self, now: float) -> None:
        """Once a second: publish this worker's requests and remember the totals."""
        self.history.append((now, *self.totals()))

    def allow(self, now: float) -> bool:
        """Whether one more retry fits in the budget; counts it when it does."""
        requests, retries = self.totals()
        since, requests_then, retries_then = self.history[0]
        allowed = self.ratio * (requests - requests_then) + self.floor * max(now - since, TICK)
        if retries - retries_then + 1 > allowed:
            return False
        self.retries += 1
        if self.slot >= 0:
            self.table.view[self.cells[1]] = self.retries
        return True


class Budgets:
    """The retry budgets of one worker, by upstream name; kept across reloads."""

    def __init__(self, loop: Any, table: WorkerCounters, worker: int) -> None:
        self.loop = loop
        self.table = table
        self.worker = worker
        self.budgets: dict[str, Budget] = {}
        self.timer: Any = None

    def budget(self, name: str, settings: Any) -> Budget:
        found = self.budgets.get(name)
        if found is None:
            found = self.budgets[name] = Budget(
                name, settings, self.table, self.worker, self.loop.time()
            )
        else:
            found.configure(settings)
        if self.timer is None:
            self.timer = self.loop.call_later(TICK, self.tick)
        return found

    def retain(self, used: set[Budget]) -> None:
        """After a load: forget the budgets it no longer names."""
        self.budgets = {name: b for name, b in self.budgets.items() if b in used}

    def tick(self) -> None:
        now = self.loop.time()
        for budget in self.budgets.values():
            budget.tick(now)
        self.timer = self.loop.call_later(TICK, self.tick) if self.budgets else None
