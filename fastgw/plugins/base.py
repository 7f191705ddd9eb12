"""The plugin contract: what a plugin class declares and what it may do to an exchange.

A plugin is a class built once per config load (per route, or once for a global entry). It
defines only the hooks it needs; the compiler binds those into per-route, per-phase tuples,
so a hook a plugin does not define costs nothing. See docs/plugins.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar

from ..config.fields import Errors, describe
from ..http.headers import REQUEST_KINDS

if TYPE_CHECKING:
    from ..config.traffic import Plan, RedisSettings, TrafficContext
    from .consumers import ConsumerIndex
    from .services import Services

log = logging.getLogger("fastgw.plugins")


class Phase(IntEnum):
    """Where a plugin's `on_request` runs; the order is fixed (lower runs first)."""

    IP_RULES = 10
    PREFLIGHT = 20
    AUTHENTICATION = 30
    AUTHORIZATION = 40
    RATE_LIMIT = 50
    CACHE = 60
    TRANSFORMATION = 70


def shown(value: Any) -> str:
    """A value from a request for a log line: text in quotes, never a Python repr (`b'bob'`),
    with control characters escaped so that a line stays one line."""
    if value is None:
        return "none"
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        text = "".join(c if 32 <= ord(c) != 127 else f"\\x{ord(c):02x}" for c in text)
    return f"'{text[:200]}'"


class Reply:
    """A short-circuit answer: the request goes no further.

    `message` is what the client sees in the JSON error body; `reason` is what is logged
    (the precise cause, never sent). A reply with `body` set is sent as it is instead.
    Replies that do not vary are built once, in the plugin's `__init__`.
    """

    __slots__ = ("body", "content_type", "extra", "message", "reason", "status")

    def __init__(
        self,
        status: int,
        message: str = "",
        *,
        extra: bytes = b"",
        reason: str = "",
        body: bytes | None = None,
        content_type: bytes = b"application/json",
    ) -> None:
        self.status = status
        self.message = message
        self.extra = extra  # header lines, each ending in CRLF
        self.reason = reason
        self.body = body
        self.content_type = content_type

    def because(self, reason: str) -> Reply:
        """The same reply with a precise reason for the log."""
        return Reply(
            self.status,
            self.message,
            extra=self.extra,
            reason=reason,
            body=self.body,
            content_type=self.content_type,
        )


# What `on_request` may return.
Outcome = None | Reply | Awaitable[Reply | None]


@dataclass(frozen=True)
class NoConfig:
    """The config of a plugin that takes no settings."""


class Plugin:
    """Base class. Subclasses set `name`, `phase`, `Config` and define any of the hooks:

    - `on_request(self, ex) -> None | Reply | Awaitable[None | Reply]`: None goes on, a Reply
      answers; an awaitable (only when I/O is needed) parks the request until it resolves.
    - `on_response(self, ex, status, head) -> None`: `head` is the response head's field list
      (pieces `name, b": ", value, b"\\r\\n"`); append to it, or replace items in place. It runs
      for every response on the route, the gateway's own replies included.
    - `on_response_body(self, ex, data, last) -> bytes`: each piece of an upstream response's
      body as it passes (after `on_response`), then once more with `data=b""` and `last=True`
      at its end; what it returns goes on instead (b"" to hold it back). Synchronous. A
      plugin whose hook keeps every body's length sets `changes_length = False`, so that the
      upstream's `Content-Length` is kept.
    - `on_log(self, ex) -> None`: once the exchange is over (`ex.status` is what was sent).
    """

    name: ClassVar[str] = ""
    phase: ClassVar[Phase] = Phase.TRANSFORMATION
    priority: ClassVar[int] = 0  # higher runs earlier within a phase
    Config: ClassVar[type] = NoConfig
    changes_length: ClassVar[bool] = True  # see on_response_body
    adds_fields: ClassVar[bool] = False  # uses ex.add_response_fields (see docs/plugins.md)

    def __init__(self, config: Any, build: Build) -> None:
        self.config = config

    @classmethod
    def check(cls, config: Any, path: str, errors: Errors) -> None:
        """Checks across fields (at load, in the master); report with `errors.add(path, ...)`."""

    @classmethod
    def check_context(cls, config: Any, path: str, context: TrafficContext, errors: Errors) -> None:
        """Checks against the config's other sections (`redis:`, `plans:`)."""

    @classmethod
    def check_route(
        cls, config: Any, path: str, route: str, phases: set[Phase], errors: Errors
    ) -> None:
        """Checks against the other plugins active on a route (`route` is its path, `phases`
        the phases of all its plugins), once per route the entry applies to."""

    def close(self) -> None:
        """The runtime that built this plugin was replaced: stop background work."""


class Build:
    """What a plugin's `__init__` gets: the consumers, header watching, worker services,
    `entry_path`, where the entry being built is written (`routes[2].plugins.rate-limit`), and
    `behind_proxies`, whether `server.trusted_proxies` is set (else the client is the peer),
    and the config's `redis` settings and `plans`."""

    def __init__(
        self, consumers: ConsumerIndex, services: Services, watched: dict[bytes, int]
    ) -> None:
        self.consumers = consumers
        self.services = services
        self.watched = watched
        self.entry_path = ""
        self.behind_proxies = False
        self.redis: RedisSettings | None = None
        self.plans: dict[str, Plan] = {}

    def watch(self, name: str | bytes) -> int:
        """The kind id under which requests carry header `name` for `Exchange.header`."""
        key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
        kind = self.watched.get(key)
        if kind is None:
            kind = self.watched[key] = FIRST_WATCHED + len(self.watched)
        return kind


# Bytes that must never reach a header value built from a token or certificate.
UNSAFE = frozenset(range(32)) - {9} | {127}

# Header kinds at or above this are headers some plugin reads (they are also forwarded).
FIRST_WATCHED = 100


_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def readable_header(value: Any, path: str, errors: Errors) -> Any:
    """A header name a plugin may read: not one the gateway itself consumes or replaces."""
    if not isinstance(value, str) or not _FIELD_NAME.fullmatch(value):
        return errors.add(path, f"expected a header name, got {describe(value)}")
    if value.lower().encode() in REQUEST_KINDS:
        return errors.add(
            path, f"'{value}' is handled by the gateway itself; choose another header"
        )
    return value
