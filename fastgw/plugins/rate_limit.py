"""rate-limit: token buckets (GCRA) per key, exact across the workers of one gateway.

Every limit of an entry applies and the tightest decides; a request one limit refuses costs
the others nothing. Over the limit: `status` (429) with `Retry-After`, or in `delay` mode a
wait for the slot when it comes within `max_delay` (waiting requests hold their slot, so a
flood cannot queue without bound). With `headers`, every response of the route carries the
tightest limit's `RateLimit-*` and `X-RateLimit-*` fields. The buckets live in the gateway's
shared table (fastgw/shared.py), so they survive reloads that keep the limit's settings.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config.fields import (
    Errors,
    boolean,
    describe,
    duration,
    integer,
    list_of,
    one_of,
    record,
    spec,
)
from ..limits import EPSILON, Limit, Limiter, whole_seconds
from .base import Build, Phase, Plugin, Reply

KEY_KINDS = ("consumer", "ip", "route", "global")
_NAMED_KEY = re.compile(r"(header|query):([!#$%&'*+\-.^_`|~0-9A-Za-z]+)")
MISSING = b"-"  # the key part of a request that lacks it: limited together, never let through


def key_part(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, str) and (value in KEY_KINDS or _NAMED_KEY.fullmatch(value)):
        return value
    return errors.add(
        path,
        "expected a key: consumer, ip, route, global, header:NAME or query:NAME, "
        f"got {describe(value)}",
    )


def positive_duration(value: Any, path: str, errors: Errors) -> Any:
    seconds = duration(value, path, errors)
    if isinstance(seconds, float) and seconds <= 0:
        return errors.add(path, f"expected a duration above 0, got {describe(value)}")
    return seconds


@dataclass(frozen=True)
class LimitConfig:
    rate: int = spec(integer(min=1))
    per: float = spec(positive_duration)
    burst: int = spec(integer(min=0), 0)


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


def key_reader(parts: tuple[str, ...], build: Build) -> Callable[[Any], bytes]:
    """The request's key, as bytes: one closure, made at load."""
    readers = [_part_reader(part, build) for part in parts]
    if len(readers) == 1:
        return readers[0]
    return lambda ex: b"\0".join([read(ex) for read in readers])


def _part_reader(part: str, build: Build) -> Callable[[Any], bytes]:
    if part == "consumer":
        return lambda ex: ex.consumer.name.encode() if ex.consumer is not None else MISSING

    if part == "ip":
        if not build.behind_proxies:
            return lambda ex: ex.client.peer  # PERF: the peer's address, as the socket gave it

        def ip(ex: Any) -> bytes:
            address = ex.client_address()
            return address.packed if address is not None else MISSING

        return ip
    if part == "route":
        return lambda ex: ex.route.name.encode()
    if part == "global":
        return lambda ex: b""
    kind, _, name = part.partition(":")
    if kind == "header":
        watched = build.watch(name)
        return lambda ex: ex.header(watched) or MISSING
    query = name.encode()
    return lambda ex: ex.query_param(query) or MISSING


class RateLimit(Plugin):
    name = "rate-limit"
    phase = Phase.RATE_LIMIT
    Config = RateLimitConfig

    @classmethod
    def check(cls, config: RateLimitConfig, path: str, errors: Errors) -> None:
        if config.backend == "redis":
            errors.add(
                f"{path}.backend",
                "the redis backend is not available in this version of fastgw (use local)",
            )

    @classmethod
    def check_route(
        cls, config: RateLimitConfig, path: str, route: str, phases: set[Phase], errors: Errors
    ) -> None:
        if "consumer" in config.key and Phase.AUTHENTICATION not in phases:
            errors.add(
                f"{route}.plugins",
                f"rate-limit ({path}) is keyed on consumer, but no authentication plugin runs "
                "on this route",
            )

    def __init__(self, config: RateLimitConfig, build: Build) -> None:
        super().__init__(config, build)
        # A limit's buckets are its own, and are kept across reloads while where it is written
        # and what it says stay the same.
        limits = [
            Limit(
                item.rate,
                item.per,
                item.burst,
                hash((build.entry_path, item.rate, item.per, item.burst, config.key)),
            )
            for item in config.limits
        ]
        max_delay = config.max_delay if config.mode == "delay" else 0.0
        self.limiter = Limiter(limits, build.services.limit_table(), max_delay)
        self.key = key_reader(config.key, build)
        self.clock = build.services.clock
        self.status = config.status
        self.adds_fields = config.headers
        self.fields = (
            b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n"
            b"X-RateLimit-Limit: %d\r\nX-RateLimit-Remaining: %d\r\nX-RateLimit-Reset: %d\r\n"
        )

    def on_request(self, ex: Any) -> Reply | Any | None:
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
            return asyncio.sleep(wait)  # delay mode: the slot comes within max_delay
        return Reply(
            self.status,
            "rate limit exceeded",
            extra=b"Retry-After: %d\r\n" % whole_seconds(-wait),
            reason=f"rate-limit: over {limit} for this key",
        )
