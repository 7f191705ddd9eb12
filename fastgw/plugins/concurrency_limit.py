"""concurrency-limit: at most `max` requests in flight per key, across the gateway's workers.

A request counts from when it is admitted until its exchange is over (the response's last
byte, the client's abort, or any error: the exchange's log hook, which always runs, releases
it), and a worker crash releases what it held (fastgw/concurrency.py). Beyond `max`, up to
`max_queue` requests wait at most `queue_timeout` for a place; the rest, and those that wait
too long, get 503 with `Retry-After: 1`. A worker's waiting requests are let in in order when
one of its own requests ends, and by a poll every POLL seconds for places freed by the others.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..concurrency import ADMITTED, FULL, QUEUED
from ..config.fields import Errors, duration, integer, list_of, spec
from ..logs import Throttled
from ..shared import MASK64
from .base import Build, Phase, Plugin, Reply
from .keys import key_part, key_reader
from .rate_limit import needs_consumer

POLL = 0.01  # seconds between looks for places other workers freed, while requests wait

log = logging.getLogger("fastgw.plugins")
table_full = Throttled(log, 10.0)


@dataclass(frozen=True)
class ConcurrencyLimitConfig:
    max: int = spec(integer(min=1))
    key: tuple[str, ...] = spec(list_of(key_part, min_len=1, allow_single=True), ("route",))
    max_queue: int = spec(integer(min=0), 0)
    queue_timeout: float = spec(duration, 1.0)


class Waiter:
    __slots__ = ("ex", "future", "tag", "timer")

    def __init__(self, ex: Any, future: Any, tag: int) -> None:
        self.ex = ex
        self.future = future
        self.tag = tag
        self.timer: Any = None


class ConcurrencyLimit(Plugin):
    name = "concurrency-limit"
    phase = Phase.RATE_LIMIT
    priority = -1  # after rate-limit, before quota: a request refused here spends no quota
    Config = ConcurrencyLimitConfig

    @classmethod
    def check_route(
        cls,
        config: ConcurrencyLimitConfig,
        path: str,
        route: str,
        phases: set[Phase],
        errors: Errors,
    ) -> None:
        needs_consumer("consumer" in config.key, cls.name, path, route, phases, errors)

    def __init__(self, config: ConcurrencyLimitConfig, build: Build) -> None:
        super().__init__(config, build)
        self.table = build.services.concurrency_table()
        self.worker = build.services.worker_index
        self.loop = build.services.loop
        self.most = config.max
        self.max_queue = config.max_queue
        self.queue_timeout = config.queue_timeout
        self.salt = hash((build.entry_path, config.max, config.key))
        self.key = key_reader(config.key, build)
        # Per exchange: the tag it holds a place under, or its Waiter while it waits.
        self.holding: dict[Any, int | Waiter] = {}
        self.waiting: dict[int, deque[Waiter]] = {}
        self.poll: Any = None
        self.busy = Reply(
            503,
            "too many requests in flight",
            extra=b"Retry-After: 1\r\n",
            reason=f"concurrency-limit: {config.max} in flight for this key",
        )

    def on_request(self, ex: Any) -> Reply | Any | None:
        tag = ((hash(self.key(ex)) ^ self.salt) & MASK64) or 1
        answer = self.table.admit(tag, self.worker, self.most, self.max_queue)
        if answer == ADMITTED:
            self.holding[ex] = tag
            return None
        if answer == QUEUED:
            waiter = Waiter(ex, self.loop.create_future(), tag)
            waiter.timer = self.loop.call_later(self.queue_timeout, self.expired, waiter)
            self.waiting.setdefault(tag, deque()).append(waiter)
            self.holding[ex] = waiter
            if self.poll is None:
                self.poll = self.loop.call_later(POLL, self.look)
            return waiter.future
        if answer == FULL:
            table_full.warning("concurrency-limit: no free slot for a key (too many keys)")
        return self.busy

    def on_log(self, ex: Any) -> None:
        """The exchange is over, however it ended: its place (or its wait) ends with it."""
        held = self.holding.pop(ex, None)
        if held is None:
            return  # an earlier plugin answered, or it was refused
        if held.__class__ is Waiter:
            self.leave(held)
            held.future.cancel()
            return
        self.table.change(held, self.worker, -1, 0)
        self.let_in(held)

    def let_in(self, tag: int) -> None:
        """This worker's waiters for `tag`, in order, while places are free."""
        queue = self.waiting.get(tag)
        while queue:
            if not self.table.promote(tag, self.worker, self.most):
                return
            waiter = queue.popleft()
            waiter.timer.cancel()
            self.holding[waiter.ex] = tag
            waiter.future.set_result(None)
        self.waiting.pop(tag, None)

    def look(self) -> None:
        """The poll: places other workers freed go to this worker's waiters."""
        self.poll = None
        for tag in list(self.waiting):
            self.let_in(tag)
        if self.waiting:
            self.poll = self.loop.call_later(POLL, self.look)

    def expired(self, waiter: Waiter) -> None:
        """Waited `queue_timeout` without a place: 503."""
        if self.holding.pop(waiter.ex, None) is waiter:
            self.leave(waiter)
            waiter.future.set_result(self.busy)

    def leave(self, waiter: Waiter) -> None:
        waiter.timer.cancel()
        queue = self.waiting.get(waiter.tag)
        if queue is not None:
            queue.remove(waiter)
            if not queue:
                del self.waiting[waiter.tag]
        self.table.change(waiter.tag, self.worker, 0, -1)
