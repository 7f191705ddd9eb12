"""Quota counts: calendar windows, and the table the workers of one gateway share.

A quota counts requests per key in a calendar window (an hour, a day or a month in a time
zone): the count starts at 0 when the window does. The table is shared memory made by the
master before it forks (as the rate-limit table, fastgw/shared.py), always locked (the
master reads it while the workers write), so a
worker crash loses nothing and a reload keeps every count. Unlike buckets, counts must survive
a restart: the master writes the table to `server.state_dir` every second when it changed and
when it stops; tags are a keyed digest (not Python's per-process hash), so they mean the same
after a restart. Each slot is 24 bytes: tag (0 = empty), the window's end (unix seconds) and
the count; a slot whose window has ended is free.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import struct
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from .logs import Throttled
from .shared import PROBES, ProcessLock

SLOT = struct.Struct("=Qdq")  # tag, end of the window (unix seconds), count
HEADER = struct.Struct("=8sQ")  # magic, slots
MAGIC = b"FGWQUOT1"
STATE_FILE = "quotas.state"

log = logging.getLogger("fastgw.quotas")
table_full = Throttled(log, 10.0)


class Window:
    """The current calendar window of one period in one time zone, recomputed only when it
    ends (a datetime computation per request would cost more than the quota itself)."""

    __slots__ = ("end", "period", "start", "zone")

    def __init__(self, period: str, zone: str) -> None:
        self.period = period
        self.zone = ZoneInfo(zone)
        self.start = self.end = 0.0

    def current(self, now: float) -> tuple[int, float]:
        """(the window's id: its start in unix seconds, its end)."""
        if not self.start <= now < self.end:
            self.start, self.end = bounds(self.period, self.zone, now)
        return int(self.start), self.end


def bounds(period: str, zone: ZoneInfo, now: float) -> tuple[float, float]:
    """Start and end (unix seconds) of the `period` window around `now`, in `zone`."""
    local = datetime.fromtimestamp(now, zone)
    if period == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 3600.0
    if period == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        following = start.date() + timedelta(days=1)
    else:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start.date() + timedelta(days=32)).replace(day=1)
    end = datetime(following.year, following.month, following.day, tzinfo=zone)
    return start.timestamp(), end.timestamp()


def tag_of(prefix: bytes, key: bytes, window: int) -> int:
    """A key's tag in one window, the same in every process and after a restart."""
    digest = hashlib.blake2b(b"%s%d:%s" % (prefix, window, key), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class QuotaTable:
    """Counts shared by the master and the workers of one gateway (made before fork)."""

    __slots__ = ("guard", "mask", "memory", "slots")

    def __init__(self, slots: int) -> None:
        self.slots = 1 << max(4, (slots - 1).bit_length())
        self.mask = self.slots - 1
        self.memory = mmap.mmap(-1, (self.slots + PROBES) * SLOT.size)
        self.guard = ProcessLock()

    def spend(self, tag: int, end: float, limit: int, now: float) -> tuple[bool, int]:
        """Count one request unless `limit` is reached: (counted, the count)."""
        memory = self.memory
        self.guard.lock()
        try:
            first = (tag & self.mask) * SLOT.size
            free = -1
            for offset in range(first, first + PROBES * SLOT.size, SLOT.size):
                found, ends, count = SLOT.unpack_from(memory, offset)
                if found == tag and ends > now:
                    if count >= limit:
                        return False, count
                    SLOT.pack_into(memory, offset, tag, ends, count + 1)
                    return True, count + 1
                if free < 0 and (found == 0 or ends <= now):
                    free = offset
            if free < 0:
                # Every slot of the window holds a live count: the quota of one of them would
                # restart at 0. Rare with a table sized for the keys; logged, never silent.
                table_full.warning(
                    "quota table full near a key: raise server.limits.max_quota_keys"
                )
                free = first
            SLOT.pack_into(memory, free, tag, end, 1)
            return True, 1
        finally:
            self.guard.unlock()

    def snapshot(self) -> bytes:
        self.guard.lock()
        try:
            return HEADER.pack(MAGIC, self.slots) + self.memory[:]
        finally:
            self.guard.unlock()

    def restore(self, data: bytes, now: float) -> int:
        """Counts from a snapshot whose windows have not ended; how many. Raises ValueError
        when `data` is not a snapshot."""
        if len(data) < HEADER.size:
            raise ValueError("too short")
        magic, slots = HEADER.unpack_from(data, 0)
        if magic != MAGIC or len(data) != HEADER.size + (slots + PROBES) * SLOT.size:
            raise ValueError("not a fastgw quota state file, or cut short")
        restored = 0
        for tag, end, count in SLOT.iter_unpack(memoryview(data)[HEADER.size :]):
            if tag and end > now and count > 0:
                self.put(tag, end, count)
                restored += 1
        return restored

    def put(self, tag: int, end: float, count: int) -> None:
        first = (tag & self.mask) * SLOT.size
        for offset in range(first, first + PROBES * SLOT.size, SLOT.size):
            found, _, _ = SLOT.unpack_from(self.memory, offset)
            if found in (0, tag):
                SLOT.pack_into(self.memory, offset, tag, end, count)
                return


class QuotaState:
    """The master's side: the table loaded from `state_dir` at start, written back when it
    changed (at most once a second, and at a clean stop). A hard kill loses at most the
    counts of the last second."""

    def __init__(self, table: QuotaTable, state_dir: str) -> None:
        self.table = table
        self.path = Path(state_dir) / STATE_FILE
        self.written = table.snapshot()  # nothing is written until a count changes
        self.failing = False

    def load(self, now: float) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as error:
            log.error("quota state %s unreadable (%s): quotas start afresh", self.path, error)
            return
        try:
            restored = self.table.restore(data, now)
        except ValueError as error:
            log.error("quota state %s is corrupt (%s): quotas start afresh", self.path, error)
            return
        self.written = self.table.snapshot()
        log.info("quota state: %d count(s) restored from %s", restored, self.path)

    def flush(self) -> None:
        """Write the table if it changed since the last write (atomically: temp + rename)."""
        data = self.table.snapshot()
        if data == self.written:
            return
        temporary = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as file:
                file.write(data)
            os.replace(temporary, self.path)
        except OSError as error:
            if not self.failing:  # one line when writing starts failing, one when it recovers
                log.error(
                    "quota state: cannot write %s (%s); counts kept in memory", self.path, error
                )
            self.failing = True
            return
        if self.failing:
            log.info("quota state: %s written again", self.path)
        self.failing = False
        self.written = data
