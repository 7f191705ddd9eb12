"""The traffic-control sections shared by several plugins: `redis:`, `plans:`, and the
numbers of a limit and of a quota (written the same in a plugin entry and in a plan)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .fields import Errors, describe, duration, integer, list_of, mapping_of, one_of, record, spec

QUOTA_PERIODS = ("hour", "day", "month")
# A request key that names a header, a query parameter or a cookie (plugins/keys.py).
NAMED_KEY = re.compile(r"(header|query|cookie):([!#$%&'*+\-.^_`|~0-9A-Za-z]+)")


def positive_duration(value: Any, path: str, errors: Errors) -> Any:
    seconds = duration(value, path, errors)
    if isinstance(seconds, float) and seconds <= 0:
        return errors.add(path, f"expected a duration above 0, got {describe(value)}")
    return seconds


@dataclass(frozen=True)
class LimitConfig:
    """`rate` requests per `per`, plus `burst` extra at once."""

    rate: int = spec(integer(min=1))
    per: float = spec(positive_duration)
    burst: int = spec(integer(min=0), 0)


@dataclass(frozen=True)
class QuotaNumbers:
    """`limit` requests per calendar `per` (hour, day or month)."""

    limit: int = spec(integer(min=1))
    per: str = spec(one_of(*QUOTA_PERIODS))


@dataclass(frozen=True)
class Plan:
    rate_limit: tuple[LimitConfig, ...] | None = spec(list_of(record(LimitConfig), min_len=1), None)
    quota: QuotaNumbers | None = spec(record(QuotaNumbers), None)


parse_plans = mapping_of(
    record(Plan),
    key_pattern=r"[A-Za-z0-9_.\-]+",
    key_hint="a name of letters, digits, '_', '-', '.'",
)


def redacted(url: str) -> str:
    """A Redis URL as it may be logged or shown: any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def redis_url(value: Any, path: str, errors: Errors) -> Any:
    """`redis://[user:password@]host:port/db`, `rediss://...` (TLS) or `unix:///path`."""
    if isinstance(value, str):
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a bad port
            port_ok = True
        except ValueError:
            port_ok = False
        if port_ok and (
            (parts.scheme in ("redis", "rediss") and parts.hostname)
            or (parts.scheme == "unix" and parts.path)
        ):
            return value
        value = redacted(value) if port_ok else "(not a URL)"
    return errors.add(
        path,
        "expected a URL such as 'redis://127.0.0.1:6379/0', 'rediss://:password@host:6380/0' or "
        f"'unix:///run/redis.sock', got {describe(value)}",
    )


@dataclass(frozen=True)
class RedisSettings:
    """The Redis shared by every gateway that uses it (limits, quotas)."""

    url: str = spec(redis_url)
    timeout: float = spec(positive_duration, 0.05)  # the longest one decision waits
    pool_size: int = spec(integer(min=1, max=1024), 8)  # connections per worker


@dataclass(frozen=True)
class TrafficContext:
    """What plugin entries are checked against beyond their own settings."""

    redis: RedisSettings | None
    plans: dict[str, Plan]
