"""rate-limit: token buckets (GCRA) per key, exact across the workers of one gateway (local
backend) or across every gateway that shares a Redis (redis backend).

Every limit of an entry applies and the tightest decides; a request one limit refuses costs
the others nothing. Over the limit: `status` (429) with `Retry-After`, or in `delay` mode a
wait for the slot when it comes within `max_delay` (waiting requests hold their slot, so a
flood cannot queue without bound). With `headers`, every response of the route carries the
tightest limit's `RateLimit-*` and `X-RateLimit-*` fields. Local buckets live in the gateway's
shared table (fastgw/shared.py), so they survive reloads that keep the limit's settings; Redis
buckets live in Redis (fastgw/redis_store.py). With `per_plan`, a consumer's plan's limits
replace the entry's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from ..config.fields import (
    Errors,
    boolean,
    duration,
    integer,
    list_of,
    one_of,
    record,
    spec,
)
from ..config.traffic import LimitConfig, TrafficContext
from ..limits import EPSILON, Limit, Limiter, whole_seconds
from ..redis_store import RATE, key_prefix
from .base import Build, Phase, Plugin, Reply
from .keys import key_part, key_reader


@dataclass(frozen=True)
class RateLimitConfig:
    limits: tuple[LimitConfig, ...] = spec(list_of(record(LimitConfig), min_len=1))
    key: tuple[str, ...] = spec(list_of(key_part, min_len=1, allow_single=True), ("ip",))
    mode: str = spec(one_of("reject", "delay"), "reject")
    max_delay: float = spec(duration, 0.5)
    backend: str = spec(one_of("local", "redis"), "local")
    on_backend_failure: str = spec(one_of("allow", "deny"), "allow")
    headers: bool = spec(boolean, True)
    status: int = spec(integer(min=400, max=599), 429)
    per_plan: bool = spec(boolean, False)


def check_backend(backend: str, path: str, context: TrafficContext, errors: Errors) -> None:
    """A redis backend needs the top-level `redis:` section (shared by rate-limit and quota)."""
    if backend == "redis" and context.redis is None:
        errors.add(
            f"{path}.backend",
            "the redis backend needs a top-level 'redis:' section "
            "(url, timeout, pool_size); none is configured",
        )


def needs_consumer(
    uses_consumer: bool, name: str, path: str, route: str, phases: set[Phase], errors: Errors
) -> None:
    """A key on the consumer, or per-plan numbers, need an authentication plugin on the route."""
    if uses_consumer and Phase.AUTHENTICATION not in phases:
        errors.add(
            f"{route}.plugins",
            f"{name} ({path}) is keyed on the consumer or uses per_plan, but no authentication "
            "plugin runs on this route",
        )


class Policy:
    """The limits one request is decided under (the entry's, or a plan's)."""

    __slots__ = ("args", "limiter", "limits", "prefixes")

    def __init__(
        self, items: tuple[LimitConfig, ...], name: tuple, config: RateLimitConfig, build: Build
    ) -> None:
        # A limit's buckets are its own, and are kept across reloads (and shared between
        # gateways, with Redis) while where it is written and what it says stay the same.
        self.limits = [
            Limit(item.rate, item.per, item.burst, hash((*name, item, config.key)))
            for item in items
        ]
        max_delay = config.max_delay if config.mode == "delay" else 0.0
        if config.backend == "local":
            self.limiter = Limiter(self.limits, build.services.limit_table(), max_delay)
        else:
            self.prefixes = [key_prefix(b"rl", *name, item, config.key) for item in items]
            shape = [round(part * 1e6) for x in self.limits for part in (x.interval, x.depth)]
            self.args = (len(items), round(max_delay * 1e6), *shape)


class CountingPlugin(Plugin):
    """What plugins that count requests per key with a backend and plans share (rate-limit,
    quota): their configs have `key`, `backend` and `per_plan`; `plan_part` names their part
    of a plan (`plans.NAME.rate_limit`, `plans.NAME.quota`)."""

    plan_part: ClassVar[str] = ""

    @classmethod
    def check_context(cls, config: Any, path: str, context: TrafficContext, errors: Errors) -> None:
        check_backend(config.backend, path, context, errors)

    @classmethod
    def check_route(
        cls, config: Any, path: str, route: str, phases: set[Phase], errors: Errors
    ) -> None:
        uses_consumer = "consumer" in config.key or config.per_plan
        needs_consumer(uses_consumer, cls.name, path, route, phases, errors)

    def by_plan(self, config: Any, build: Build, make: Callable[[str, Any], Any]) -> dict:
        """With `per_plan`, `make(plan name, the plan's part)` for each plan that has a part."""
        if not config.per_plan:
            return {}
        return {
            name: make(name, part)
            for name, plan in build.plans.items()
            if (part := getattr(plan, self.plan_part)) is not None
        }

    def planned(self, ex: Any, default: Any) -> Any:
        """What the consumer's plan made (`by_plan`), else `default`."""
        consumer = ex.consumer
        if consumer is None or consumer.plan is None:
            return default
        return self.plans.get(consumer.plan, default)


class RateLimit(CountingPlugin):
    name = "rate-limit"
    phase = Phase.RATE_LIMIT
    Config = RateLimitConfig
    plan_part = "rate_limit"

    def __init__(self, config: RateLimitConfig, build: Build) -> None:
        super().__init__(config, build)
        self.policy = Policy(config.limits, (build.entry_path,), config, build)
        self.limiter = getattr(self.policy, "limiter", None)
        self.plans: dict[str, Policy] = self.by_plan(
            config,
            build,
            lambda plan, limits: Policy(limits, (build.entry_path, "plan", plan), config, build),
        )
        self.key = key_reader(config.key, build)
        self.clock = build.services.clock
        self.loop = build.services.loop
        self.status = config.status
        self.adds_fields = config.headers
        self.fields = (
            b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n"
            b"X-RateLimit-Limit: %d\r\nX-RateLimit-Remaining: %d\r\nX-RateLimit-Reset: %d\r\n"
        )
        if config.backend == "redis":
            assert build.redis is not None  # checked at load
            self.store = build.services.redis_store(build.redis)
            self.unavailable = Reply(
                503,
                "rate limit unavailable",
                extra=b"Retry-After: 1\r\n",
                reason="rate-limit: the redis backend failed (on_backend_failure: deny)",
            )
            self.deny = config.on_backend_failure == "deny"
            self.on_request = self.redis_request
        elif config.per_plan:
            self.on_request = self.plan_request

    def on_request(self, ex: Any) -> Reply | Any | None:
        # PERF: the common case, one local policy, with the fields formatted inline.
        wait, limit, remaining, reset = self.limiter.decide(self.key(ex), self.clock())
        if self.adds_fields:
            # PERF: all six fields in one formatting, handed to the exchange (no per-request
            # state, no response hook of its own).
            whole = int(reset)  # PERF: whole_seconds(reset), inline
            if reset - whole > EPSILON:
                whole += 1
            lines = self.fields % (limit, remaining, whole, limit, remaining, whole)
            # PERF: ex.add_response_fields, inline
            ex.added = lines if ex.added is None else ex.added + lines
        if wait == 0.0:
            return None
        if wait > 0.0:
            return self.delayed(wait, self.loop.create_future())
        return self.refused(-wait, limit)

    def plan_request(self, ex: Any) -> Reply | Any | None:
        decision = self.planned(ex, self.policy).limiter.decide(self.key(ex), self.clock())
        outcome = self.settle(ex, *decision)
        if outcome.__class__ is float:
            return self.delayed(outcome, self.loop.create_future())
        return outcome

    def redis_request(self, ex: Any) -> Any:
        """Queued for this turn's batch; the Future resolves when Redis (or its timeout) has
        answered, and later in delay mode."""
        policy = self.planned(ex, self.policy)
        key = self.key(ex)
        future = self.loop.create_future()
        done = partial(self.redis_decided, ex, future, policy)
        self.store.decide(RATE, [prefix + key for prefix in policy.prefixes], policy.args, done)
        return future

    def redis_decided(self, ex: Any, future: Any, policy: Policy, answer: list[int] | None) -> None:
        if future.done():
            return  # the client went away meanwhile
        if answer is None:
            future.set_result(self.unavailable if self.deny else None)
            return
        wait, tight, remaining, reset = answer
        limit = policy.limits[tight - 1].capacity
        outcome = self.settle(ex, wait / 1e6, limit, remaining, reset / 1e6)
        if outcome.__class__ is float:
            self.delayed(outcome, future)
        else:
            future.set_result(outcome)

    def settle(
        self, ex: Any, wait: float, limit: int, remaining: int, reset: float
    ) -> Reply | float | None:
        """A decision's fields and outcome: None to go on, the seconds to wait, or a Reply."""
        if self.adds_fields:
            whole = whole_seconds(reset)
            ex.add_response_fields(self.fields % (limit, remaining, whole, limit, remaining, whole))
        if wait <= 0.0:
            return None if wait == 0.0 else self.refused(-wait, limit)
        return wait

    def refused(self, retry_after: float, limit: int) -> Reply:
        return Reply(
            self.status,
            "rate limit exceeded",
            extra=b"Retry-After: %d\r\n" % whole_seconds(retry_after),
            reason=f"rate-limit: over {limit} for this key",
        )

    def delayed(self, wait: float, future: Any) -> Any:
        """`future`, resolved after `wait` seconds (delay mode: the slot comes then)."""
        self.loop.call_later(wait, release, future)
        return future


def release(future: Any) -> None:
    if not future.done():
        future.set_result(None)
