"""Requests in flight per key, counted across the workers of one gateway and never leaked.

A shared-memory table made by the master before it forks (as fastgw/shared.py's). Each slot
is a 64-bit tag (Python's hash of the limit and the key: the workers share the master's hash
seed) and, for each worker, two counts: its requests in flight and its requests queued for
that key. A key's totals are the sums over the workers. Keeping each worker's share apart is
what makes a crash harmless: the master zeroes the dead worker's counts before it starts the
next one, so nothing it held stays held. A slot whose counts are all zero is free.
"""

from __future__ import annotations

import mmap
import struct

from .shared import NO_LOCK, PROBES, ProcessLock

# What `admit` answers.
ADMITTED, QUEUED, REFUSED, FULL = range(4)


class ConcurrencyTable:
    __slots__ = ("counts", "guard", "mask", "memory", "size", "tag", "workers")

    def __init__(self, slots: int, workers: int) -> None:
        """With one worker nothing else writes or reads the table while it runs (the master
        frees its share only once it is dead), so no lock is taken."""
        self.workers = workers
        self.tag = struct.Struct("=Q")
        self.counts = struct.Struct(f"={2 * workers}i")  # in flight, queued; per worker
        self.size = self.tag.size + self.counts.size
        capacity = 1 << max(4, (slots - 1).bit_length())
        self.mask = capacity - 1
        self.memory = mmap.mmap(-1, (capacity + PROBES) * self.size)
        self.guard = ProcessLock() if workers > 1 else NO_LOCK

    def find(self, tag: int) -> tuple[int, list[int]] | None:
        """(offset, counts) of the key's slot, or of a free one; None when the window is full.
        Call under the lock."""
        memory = self.memory
        first = (tag & self.mask) * self.size
        free = None
        for offset in range(first, first + PROBES * self.size, self.size):
            (found,) = self.tag.unpack_from(memory, offset)
            if found == tag:  # PERF: most keys sit in the first slot of their window
                return offset, list(self.counts.unpack_from(memory, offset + 8))
            if free is None:
                counts = self.counts.unpack_from(memory, offset + 8)
                if not any(counts):
                    free = offset, list(counts)
        if free is not None:
            self.tag.pack_into(memory, free[0], tag)
        return free

    def admit(self, tag: int, worker: int, most: int, max_queue: int) -> int:
        """In flight if fewer than `most` are, else queued if fewer than `max_queue` wait."""
        self.guard.lock()
        try:
            found = self.find(tag)
            if found is None:
                return FULL
            offset, counts = found
            if sum(counts[0::2]) < most:
                counts[2 * worker] += 1
                answer = ADMITTED
            elif sum(counts[1::2]) < max_queue:
                counts[2 * worker + 1] += 1
                answer = QUEUED
            else:
                return REFUSED
            self.counts.pack_into(self.memory, offset + 8, *counts)
            return answer
        finally:
            self.guard.unlock()

    def promote(self, tag: int, worker: int, most: int) -> bool:
        """One of this worker's queued requests goes in flight, if fewer than `most` are."""
        self.guard.lock()
        try:
            found = self.find(tag)
            if found is None:
                return False
            offset, counts = found
            if sum(counts[0::2]) >= most:
                return False
            counts[2 * worker] += 1
            counts[2 * worker + 1] -= 1
            self.counts.pack_into(self.memory, offset + 8, *counts)
            return True
        finally:
            self.guard.unlock()

    def change(self, tag: int, worker: int, flight: int, queued: int) -> None:
        """Add `flight` and `queued` (negative: release) to this worker's counts for `tag`."""
        self.guard.lock()
        try:
            found = self.find(tag)
            if found is not None:
                offset, counts = found
                counts[2 * worker] = max(0, counts[2 * worker] + flight)
                counts[2 * worker + 1] = max(0, counts[2 * worker + 1] + queued)
                self.counts.pack_into(self.memory, offset + 8, *counts)
        finally:
            self.guard.unlock()

    def in_flight(self, tag: int) -> int:
        """The key's requests in flight, all workers together (for tests and the admin)."""
        self.guard.lock()
        try:
            found = self.find(tag)
            return sum(found[1][0::2]) if found is not None else 0
        finally:
            self.guard.unlock()

    def forget_worker(self, worker: int) -> None:
        """A worker died: what it held or queued is released (the master, before it starts
        the next worker in its place)."""
        self.guard.lock()
        try:
            capacity = len(self.memory) // self.size
            for index in range(capacity):
                offset = index * self.size + 8
                counts = list(self.counts.unpack_from(self.memory, offset))
                if counts[2 * worker] or counts[2 * worker + 1]:
                    counts[2 * worker] = counts[2 * worker + 1] = 0
                    self.counts.pack_into(self.memory, offset, *counts)
        finally:
            self.guard.unlock()
