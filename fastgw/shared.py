"""State shared by the workers of one gateway: a table of rate-limit buckets in shared memory.

The master maps it (anonymous, MAP_SHARED) before it forks, so every worker sees the same
bytes; a reload keeps it, and a worker that crashes loses nothing (the memory is the master's).
Each slot is 16 bytes: a 64-bit tag (the hash of a limit and a key; 0 = empty) and a float,
the bucket's GCRA "theoretical arrival time". A bucket whose time has passed is full, which is
the same as no state, so such a slot may be taken by another key: the table never needs
deleting, and a full table replaces the bucket closest to full.

With several workers, a decision (all the limits of one request) runs under an exclusive
`fcntl` record lock on a memory file: 1.3 us per lock and unlock here, against 0.08 us for a
POSIX semaphore, but the kernel releases it when its holder dies, where a semaphore held by a
killed worker would stop every other worker for good. With one worker no lock is taken.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

SLOT = struct.Struct("=Qd")  # tag, theoretical arrival time (time.monotonic seconds)
PROBES = 8  # slots looked at for one key: a small window, so a miss costs little
EPSILON = 1e-9  # times within this of each other are equal (float sums drift by ~1e-13)
MASK64 = (1 << 64) - 1


class SharedTable:
    __slots__ = ("lock_fd", "mask", "memory", "shared", "slots")

    def __init__(self, slots: int, shared_lock: bool) -> None:
        """`slots` is rounded up to a power of two. With `shared_lock`, decisions lock across
        processes (call before fork; every process that inherits it shares the table)."""
        size = 1 << max(4, (slots - 1).bit_length())
        self.slots = size
        self.mask = size - 1
        # Pages are only touched when used: a large table costs address space, not memory.
        self.memory = mmap.mmap(-1, (size + PROBES) * SLOT.size)
        self.lock_fd = -1
        self.shared = shared_lock
        if shared_lock:
            self.lock_fd = os.memfd_create("fastgw-limits", os.MFD_CLOEXEC)
            os.set_inheritable(self.lock_fd, True)

    def lock(self) -> None:
        if self.lock_fd >= 0:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        if self.lock_fd >= 0:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_UN)

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

    def spend(self, tag: int, interval: float, depth: float, max_delay: float, now: float) -> float:
        """One GCRA step on one bucket, atomically: the seconds until the bucket would be full
        again with this request spent (`after`); spent only if `after - depth <= max_delay`.
        The one-limit case of `Limiter`, in one call (PERF: no call per lock, probe, store)."""
        if self.shared:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_EX)
        try:
            memory = self.memory
            offset = (tag & self.mask) * 16
            found, tat = SLOT.unpack_from(memory, offset)
            if found != tag:
                offset, tat = self.find(tag, now)
            after = (tat if tat > now else now) + interval - now
            if after - depth <= max_delay + EPSILON:
                SLOT.pack_into(memory, offset, tag, now + after)
        finally:
            if self.shared:
                fcntl.lockf(self.lock_fd, fcntl.LOCK_UN)
        return after


def tag_of(*parts: bytes) -> int:
    """A key's 64-bit tag; never 0 (the empty slot). Python's hash is seeded per interpreter,
    and forked workers share the master's seed, so every worker computes the same tag."""
    return (hash(b"\0".join(parts)) & MASK64) or 1
