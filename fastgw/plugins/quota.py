"""quota: at most `limit` requests per key in a calendar hour, day or month.

When the window's quota is spent, `status` (429) with `Retry-After` until the window ends.
Every response of the route carries `X-Quota-Limit`, `X-Quota-Remaining` and `X-Quota-Reset`
(seconds until the window ends). Local counts are shared by the gateway's workers and kept in
`server.state_dir` across restarts (fastgw/quotas.py); Redis counts live in Redis, one key per
window that expires when it ends. With `per_plan`, the consumer's plan's quota replaces the
entry's. Windows follow the gateway's wall clock in `timezone`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..config.fields import Errors, boolean, describe, integer, list_of, one_of, spec
from ..config.traffic import QUOTA_PERIODS, QuotaNumbers
from ..limits import whole_seconds
from ..quotas import Window, tag_of
from ..redis_store import QUOTA, key_prefix
from .base import Build, Phase, Reply
from .keys import key_part, key_reader
from .rate_limit import CountingPlugin

REDIS_SLACK = 60  # seconds a Redis counter outlives its window (gateway clocks differ a little)


def timezone(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, str):
        try:
            ZoneInfo(value)
            return value
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return errors.add(
        path, f"expected a time zone such as UTC or Europe/Paris, got {describe(value)}"
    )


@dataclass(frozen=True)
class QuotaConfig:
    limit: int = spec(integer(min=1))
    per: str = spec(one_of(*QUOTA_PERIODS))
    key: tuple[str, ...] = spec(list_of(key_part, min_len=1, allow_single=True), ("consumer",))
    backend: str = spec(one_of("local", "redis"), "local")
    on_backend_failure: str = spec(one_of("allow", "deny"), "allow")
    timezone: str = spec(timezone, "UTC")
    per_plan: bool = spec(boolean, False)
    status: int = spec(integer(min=400, max=599), 429)


class Terms:
    """One quota's numbers and its counters' names (the entry's, or a plan's). A counter is
    named by where the entry is written, its period, key and time zone, not by the limit or
    the plan: a consumer moved to another plan, or a raised limit, keeps what it has spent."""

    __slots__ = ("limit", "prefix", "window")

    def __init__(self, numbers: QuotaNumbers, path: str, config: QuotaConfig) -> None:
        self.limit = numbers.limit
        self.window = Window(numbers.per, config.timezone)
        self.prefix = key_prefix(b"q", path, numbers.per, config.key, config.timezone)


class Quota(CountingPlugin):
    name = "quota"
    phase = Phase.RATE_LIMIT
    priority = -2  # after rate-limit and concurrency-limit: a request they refuse spends none
    Config = QuotaConfig
    adds_fields = True
    plan_part = "quota"

    def __init__(self, config: QuotaConfig, build: Build) -> None:
        super().__init__(config, build)
        numbers = QuotaNumbers(config.limit, config.per)
        self.terms = Terms(numbers, build.entry_path, config)
        self.plans: dict[str, Terms] = self.by_plan(
            config, build, lambda _, numbers: Terms(numbers, build.entry_path, config)
        )
        self.key = key_reader(config.key, build)
        self.loop = build.services.loop
        self.wall_clock = build.services.wall_clock
        self.status = config.status
        self.deny = config.on_backend_failure == "deny"
        if config.backend == "redis":
            assert build.redis is not None  # checked at load
            self.store = build.services.redis_store(build.redis)
            self.on_request = self.redis_request
        else:
            self.table = build.services.quota_table()

    def on_request(self, ex: Any) -> Reply | None:
        terms = self.planned(ex, self.terms)
        now = self.wall_clock()
        window, end = terms.window.current(now)
        counted, used = self.table.spend(
            tag_of(terms.prefix, self.key(ex), window), end, terms.limit, now
        )
        return self.settle(ex, terms.limit, counted, used, end - now)

    def redis_request(self, ex: Any) -> Any:
        terms = self.planned(ex, self.terms)
        now = self.wall_clock()
        window, end = terms.window.current(now)
        key = b"%s%d:%s" % (terms.prefix, window, self.key(ex))
        future = self.loop.create_future()
        done = partial(self.redis_decided, ex, future, terms, end)
        self.store.decide(QUOTA, [key], (terms.limit, int(end) + REDIS_SLACK), done)
        return future

    def redis_decided(
        self, ex: Any, future: Any, terms: Terms, end: float, answer: list[int] | None
    ) -> None:
        if future.done():
            return  # the client went away meanwhile
        if answer is None:
            future.set_result(self.unavailable() if self.deny else None)
            return
        counted, used = answer
        future.set_result(
            self.settle(ex, terms.limit, bool(counted), used, end - self.wall_clock())
        )

    def settle(self, ex: Any, limit: int, counted: bool, used: int, reset: float) -> Reply | None:
        seconds = whole_seconds(reset)
        remaining = limit - used if counted else 0
        ex.add_response_fields(
            b"X-Quota-Limit: %d\r\nX-Quota-Remaining: %d\r\nX-Quota-Reset: %d\r\n"
            % (limit, remaining, seconds)
        )
        if counted:
            return None
        return Reply(
            self.status,
            "quota exceeded",
            extra=b"Retry-After: %d\r\n" % seconds,
            reason=f"quota: {limit} spent for this key until the window ends",
        )

    def unavailable(self) -> Reply:
        return Reply(
            503,
            "quota unavailable",
            extra=b"Retry-After: 1\r\n",
            reason="quota: the redis backend failed (on_backend_failure: deny)",
        )
