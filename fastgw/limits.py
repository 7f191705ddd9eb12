"""Token buckets as GCRA: one number per key (the theoretical arrival time), the clock passed in.

A limit of `rate` per `per` seconds with `burst` extra is a bucket of `rate + burst` requests
refilled at `rate` per `per`: up to `rate + burst` pass at once, then one every `per / rate`
seconds. GCRA stores, per key, the time at which the bucket will be full again (`tat`); a
request costs one interval T = per / rate: it passes if the new `tat` is within the bucket's
depth (capacity x T) of now.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .shared import EPSILON, MASK64, SLOT

if TYPE_CHECKING:
    from .shared import SharedTable

# What `decide` returns: (wait, limit, remaining, reset). `wait` is 0.0 to pass now, > 0 to
# pass after waiting that long (delay mode), or < 0 when refused, -retry_after seconds.
Decision = tuple[float, int, int, float]


class Limit:
    """One bucket's parameters; `salt` makes its keys distinct from other limits' keys."""

    __slots__ = ("capacity", "depth", "interval", "salt")

    def __init__(self, rate: int, per: float, burst: int, salt: int) -> None:
        self.interval = per / rate
        self.capacity = rate + burst
        self.depth = self.capacity * self.interval
        self.salt = salt


class Limiter:
    """All the limits of one plugin entry, decided together: every limit applies, and a
    request a limit refuses costs no other limit anything."""

    __slots__ = ("decide", "limits", "max_delay", "table")

    def __init__(self, limits: list[Limit], table: SharedTable, max_delay: float) -> None:
        self.limits = limits
        self.table = table
        self.max_delay = max_delay  # 0 in reject mode
        # PERF: most entries have one limit: its decision skips the bookkeeping of several.
        self.decide = self.decide_one if len(limits) == 1 else self.decide_all

    def decide_one(self, key: bytes, now: float) -> Decision:
        limit = self.limits[0]
        interval = limit.interval
        # A tag is never 0 (the empty slot). Python's hash is seeded per interpreter, and forked
        # workers share the master's seed, so every worker computes the same tag.
        tag = ((hash(key) ^ limit.salt) & MASK64) or 1
        table = self.table
        shared = table.shared
        if shared:
            table.lock()
        try:
            # PERF: the common case (the key in the first slot of its window) read and written
            # here, without a call per step.
            memory = table.memory
            offset = (tag & table.mask) * 16
            found, tat = SLOT.unpack_from(memory, offset)
            if found != tag:
                offset, tat = table.find(tag, now)
            after = (tat if tat > now else now) + interval - now
            over = after - limit.depth
            if over <= self.max_delay + EPSILON:
                SLOT.pack_into(memory, offset, tag, now + after)
        finally:
            if shared:
                table.unlock()
        if over <= EPSILON:
            left = int((limit.depth - after) / interval + EPSILON)
            return 0.0, limit.capacity, left if left > 0 else 0, after
        if over > self.max_delay + EPSILON:
            return -over, limit.capacity, 0, after - interval  # refused: nothing spent
        return over, limit.capacity, 0, after

    def decide_all(self, key: bytes, now: float) -> Decision:
        base = hash(key)  # PERF: cached on the bytes object; one hash for every limit
        table = self.table
        wait = 0.0
        # The tightest limit: the fewest requests left if this one passes, and the seconds
        # until its bucket is full again.
        tight: Limit | None = None
        remaining = 0
        full_in = 0.0
        spent = []
        table.lock()
        try:
            for limit in self.limits:
                tag = ((base ^ limit.salt) & MASK64) or 1
                offset, tat = table.find(tag, now)
                after = (tat if tat > now else now) + limit.interval - now
                over = after - limit.depth
                if over > wait + EPSILON:
                    wait = over
                left = int((limit.depth - after) / limit.interval + EPSILON)
                if tight is None or left < remaining:
                    tight, remaining, full_in = limit, left, after
                spent.append((offset, tag, now + after))
            if wait > self.max_delay + EPSILON:
                # Refused: nothing is spent; it may come back when the slowest limit has room.
                return -wait, tight.capacity, 0, full_in - tight.interval
            for offset, tag, tat in spent:
                table.store(offset, tag, tat)
        finally:
            table.unlock()
        return wait, tight.capacity, max(remaining, 0), full_in


def whole_seconds(seconds: float) -> int:
    """Seconds for a header: rounded up, at least 1 when anything is left to wait."""
    return max(1, math.ceil(seconds - EPSILON)) if seconds > EPSILON else 0
