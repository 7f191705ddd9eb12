"""Each worker's sign of life and the config version it serves, in shared memory.

A worker's event loop writes the time (CLOCK_MONOTONIC, one clock for the machine) and its
config version every `EVERY` seconds into its own cells; the master reads them to tell systemd
when every worker serves a config (READY=1) and whether they all still answer (the watchdog).
A worker whose loop hangs, or that is stopped (SIGSTOP), stops beating.
"""

from __future__ import annotations

import time

from .counters import WorkerCounters, tag

EVERY = 0.5  # seconds between a worker's beats
STALE = 2.0  # seconds without a beat after which a worker does not answer
BEAT, VERSION = 0, 1


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Heartbeats:
    def __init__(self, workers: int) -> None:
        self.table = WorkerCounters(2, workers, slots=2)
        self.slot = self.table.slot(tag("heartbeat"))

    def beat(self, worker: int, version: int) -> None:
        """A worker's loop is alive and serves `version` (the worker calls it)."""
        view = self.table.view
        view[self.table.cell(self.slot, VERSION, worker)] = version
        view[self.table.cell(self.slot, BEAT, worker)] = now_ms()

    def age(self, worker: int, since: float) -> float | None:
        """Seconds since the worker's last beat, None if it has not beaten since `since`
        (time.monotonic: when it was started)."""
        beat = self.table.view[self.table.cell(self.slot, BEAT, worker)]
        if beat < since * 1000:
            return None
        return (now_ms() - beat) / 1000

    def serving(self, worker: int, since: float) -> int:
        """The config version the worker serves if it beat within STALE seconds (and after
        `since`), else 0."""
        age = self.age(worker, since)
        if age is None or age > STALE:
            return 0
        return self.table.view[self.table.cell(self.slot, VERSION, worker)]
