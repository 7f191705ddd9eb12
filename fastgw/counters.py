"""Counters per name, one column per worker, in shared memory: a name's total is the sum.

The master makes the table before it forks. Each worker writes only its own column (no lock:
one aligned 64-bit store), and anyone may read the sum. A name's slot is claimed once, under
a lock, when a config first names it. Used for what must be counted across the workers of one
gateway but changes too often for a lock: retry budgets (upstream/budget.py) and circuit
breakers (upstream/breaker.py).
"""

from __future__ import annotations

import mmap

from .shared import NO_LOCK, ProcessLock

SLOTS = 4096  # names (upstreams, targets) a gateway's configs may ever count


class WorkerCounters:
    __slots__ = ("fields", "guard", "memory", "view", "width", "workers")

    def __init__(self, fields: int, workers: int, slots: int = SLOTS) -> None:
        self.fields = fields
        self.workers = workers
        self.width = 1 + fields * workers  # the tag, then each field's column of workers
        self.memory = mmap.mmap(-1, slots * self.width * 8)
        self.view = memoryview(self.memory).cast("q")
        self.guard = ProcessLock() if workers > 1 else NO_LOCK

    def slot(self, name: int) -> int:
        """The index of the name's first counter (its slot claimed when new); -1 when full.
        `name` is a non-zero 63-bit tag (a hash the workers agree on)."""
        view = self.view
        width = self.width
        slots = len(view) // width
        start = name % slots
        self.guard.lock()
        try:
            for step in range(slots):
                base = ((start + step) % slots) * width
                if view[base] == name:
                    return base + 1
                if view[base] == 0:
                    view[base] = name
                    return base + 1
        finally:
            self.guard.unlock()
        return -1

    def find(self, name: int) -> int:
        """The index of the name's first counter, or -1 when it has no slot (none claimed)."""
        view = self.view
        width = self.width
        slots = len(view) // width
        start = name % slots
        for step in range(slots):
            base = ((start + step) % slots) * width
            if view[base] == name:
                return base + 1
            if view[base] == 0:
                return -1
        return -1

    def cell(self, slot: int, field: int, worker: int) -> int:
        """The index of one worker's counter of one field."""
        return slot + field * self.workers + worker

    def total(self, slot: int, field: int) -> int:
        first = slot + field * self.workers
        return sum(self.view[first : first + self.workers])

    def forget_worker(self, worker: int, fields: range | tuple[int, ...] | None = None) -> None:
        """A worker died: its counts (of `fields`, default all) go to zero (the master, before
        the next one starts). Cumulative counters are left: they never go back."""
        view = self.view
        for base in range(0, len(view), self.width):
            if view[base]:
                for field in range(self.fields) if fields is None else fields:
                    view[base + 1 + field * self.workers + worker] = 0


def tag(*parts: object) -> int:
    """A non-zero 63-bit name for `parts`, the same in every worker (Python's hash: forked
    workers share the master's seed)."""
    return (hash(parts) & 0x7FFF_FFFF_FFFF_FFFF) or 1
