"""State shared by the workers of one gateway: a table of rate-limit buckets in shared memory.

The master maps it (anonymous, MAP_SHARED) before it forks, so every worker sees the same
bytes; a reload keeps it, and a worker that crashes loses nothing (the memory is the master's).
Each slot is 16 bytes: a 64-bit tag (the hash of a limit and a key; 0 = empty) and a float,
the bucket's GCRA "theoretical arrival time". A bucket whose time has passed is full, which is
the same as no state, so such a slot may be taken by another key: the table never needs
deleting, and a full table replaces the bucket closest to full.

With several workers, a decision (all the limits of one request) runs under a lock: a POSIX
semaphore (0.3 us per lock and unlock here, against 1.3 us for an `fcntl` record lock). A
semaphore is not released when its holder dies, so the holder writes its pid beside it; a
worker that waits longer than STUCK (a critical section takes microseconds) looks at that pid
and takes the lock over if the process is gone. With one worker no lock is taken.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import struct
from pathlib import Path

from .logs import Throttled

SLOT = struct.Struct("=Qd")  # tag, theoretical arrival time (time.monotonic seconds)
PROBES = 8  # slots looked at for one key: a small window, so a miss costs little
HOLDER = struct.Struct("=q")  # the pid of the process holding the lock; 0 when free
STUCK = 0.05  # seconds a worker waits for the lock before it asks whether the holder lives
EPSILON = 1e-9  # times within this of each other are equal (float sums drift by ~1e-13)
MASK64 = (1 << 64) - 1  # tags are 64-bit

log = logging.getLogger("fastgw.shared")
taken_over = Throttled(log, 10.0)

_pid = os.getpid()  # this process's, written as the lock's holder (kept right across forks)


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class ProcessLock:
    """A lock between the processes that inherit it (made before fork): a POSIX semaphore,
    plus the holder's pid in shared memory so that a lock whose holder died is taken over."""

    __slots__ = ("acquire", "header", "release")

    def __init__(self) -> None:
        self.header = mmap.mmap(-1, mmap.PAGESIZE)  # the lock holder's pid
        semaphore = multiprocessing.get_context("fork").Lock()
        self.acquire = semaphore.acquire
        self.release = semaphore.release

    def lock(self) -> None:
        if not self.acquire(True, STUCK):
            self.wait_or_take_over()
        HOLDER.pack_into(self.header, 0, _pid)

    def unlock(self) -> None:
        if HOLDER.unpack_from(self.header, 0)[0] == _pid:
            HOLDER.pack_into(self.header, 0, 0)
            self.release()
        # else another process took the lock over from this one (it looked dead): it releases

    def wait_or_take_over(self) -> None:
        """The lock is held longer than any decision takes: keep waiting while its holder
        lives; when it died holding it (or before it could write its pid), take it over."""
        while True:
            (holder,) = HOLDER.unpack_from(self.header, 0)
            if holder and holder != _pid and alive(holder):
                if self.acquire(True, STUCK):
                    return
                continue
            taken_over.warning("shared state: process %d died holding the lock; taken over", holder)
            return


class NoLock:
    """The lock of state only one process touches at a time (one worker)."""

    def lock(self) -> None:
        pass

    def unlock(self) -> None:
        pass


NO_LOCK = NoLock()


class SharedTable:
    __slots__ = ("guard", "mask", "memory", "shared")

    def __init__(self, slots: int, shared_lock: bool) -> None:
        """`slots` is rounded up to a power of two. With `shared_lock`, decisions lock across
        processes (call before fork; every process that inherits it shares the table)."""
        size = 1 << max(4, (slots - 1).bit_length())
        self.mask = size - 1
        # Pages are only touched when used: a large table costs address space, not memory.
        self.memory = mmap.mmap(-1, (size + PROBES) * SLOT.size)
        self.shared = shared_lock
        self.guard = ProcessLock()

    def lock(self) -> None:
        if self.shared:
            self.guard.lock()

    def unlock(self) -> None:
        if self.shared:
            self.guard.unlock()

    def find(self, tag: int, now: float) -> tuple[int, float]:
        """(offset, time) of the key's slot; a new key gets a reusable slot and time `now`.
        Call under the lock; write with `store`."""
        memory = self.memory
        first = (tag & self.mask) * 16
        found, at = SLOT.unpack_from(memory, first)
        if found == tag:
            return first, at  # PERF: most keys sit in the first slot of their window
        reusable = -1
        oldest_offset, oldest_time = first, float("inf")
        for offset in range(first, first + PROBES * 16, 16):
            found, at = SLOT.unpack_from(memory, offset)
            if found == tag:
                return offset, at
            if reusable < 0 and (found == 0 or at <= now):
                reusable = offset
            elif at < oldest_time:
                oldest_offset, oldest_time = offset, at
        # PERF: no scan of the table; the window is full of live buckets: the one that would
        # be full soonest is replaced (its key starts again with a full bucket).
        return (reusable if reusable >= 0 else oldest_offset), now

    def store(self, offset: int, tag: int, at: float) -> None:
        SLOT.pack_into(self.memory, offset, tag, at)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
