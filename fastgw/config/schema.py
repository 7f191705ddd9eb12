"""The configuration schema: frozen dataclasses whose fields say how they are parsed.

Defaults are the secure ones documented in docs/configuration.md.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..http.addresses import Network, network
from ..http.paths import DECODE, KEEP, REJECT
from ..observe import otlp
from ..plugins.config import PluginEntry, parse_plugins
from ..plugins.consumers import Consumer
from ..tls import ListenerTls, check_listener_tls
from .fields import (
    INVALID,
    Errors,
    boolean,
    describe,
    duration,
    integer,
    join,
    list_of,
    mapping_of,
    number,
    one_of,
    optional,
    record,
    size,
    spec,
    string,
)
from .traffic import NAMED_KEY, Plan, RedisSettings, positive_duration

_HOST_PORT = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]*)):(?P<port>\d{1,5})"
)


def split_host_port(text: str, default_host: str = "0.0.0.0") -> tuple[str, int] | None:
    match = _HOST_PORT.fullmatch(text)
    if not match or not 0 < int(match["port"]) < 65536:
        return None
    return (match["v6"] or match["host"] or default_host, int(match["port"]))


def address(value: Any, path: str, errors: Errors, default_host: str = "0.0.0.0") -> Any:
    """`host:port`; `:port` binds `default_host`."""
    if isinstance(value, str):
        parsed = split_host_port(value.strip(), default_host)
        if parsed:
            return parsed
    return errors.add(
        path, f"expected an address 'host:port' such as '127.0.0.1:8080', got {describe(value)}"
    )


def admin_address(value: Any, path: str, errors: Errors) -> Any:
    """The admin listener's address: without a host (`:9901`), loopback only."""
    return address(value, path, errors, "127.0.0.1")


@dataclass(frozen=True)
class Listener:
    address: tuple[str, int] = spec(address)
    tls: ListenerTls | None = spec(optional(record(ListenerTls)), None)

    @property
    def scheme(self) -> bytes:
        return b"https" if self.tls is not None else b"http"


def listener(value: Any, path: str, errors: Errors) -> Any:
    """A listener is an address string or a mapping `{address: ..., tls: {...}}`."""
    if isinstance(value, str):
        parsed = address(value, path, errors)
        return INVALID if parsed is INVALID else Listener(address=parsed)
    parsed = _listener_record(value, path, errors)
    if parsed is not INVALID and parsed.tls is not None:
        check_listener_tls(parsed.tls, join(path, "tls"), errors)
    return parsed


_listener_record = record(Listener)


@dataclass(frozen=True)
class Limits:
    max_request_line: int = spec(size, 8192)
    max_header_bytes: int = spec(size, 16384)
    max_body_bytes: int = spec(size, 10 * 1024 * 1024)
    max_connections: int = spec(integer(min=1), 10000)
    # Rate-limit buckets the gateway keeps (shared by its workers); fixed until a restart.
    max_limit_keys: int = spec(integer(min=1024, max=1 << 28), 1 << 20)
    # Quota counters the gateway keeps (24 bytes each, written to state_dir every second).
    max_quota_keys: int = spec(integer(min=1024, max=1 << 24), 1 << 16)
    # Keys with requests in flight under concurrency-limit at once (all workers together).
    max_concurrency_keys: int = spec(integer(min=1024, max=1 << 22), 1 << 14)


@dataclass(frozen=True)
class ServerTimeouts:
    client_header: float = spec(duration, 10.0)
    client_body: float = spec(duration, 60.0)  # the longest pause inside a request body
    send: float = spec(duration, 60.0)  # the longest a client may take no response bytes
    keepalive: float = spec(duration, 60.0)
    drain: float = spec(duration, 30.0)


@dataclass(frozen=True)
class Paths:
    # `%2F` / `%5C` in a path: 400, decoded to `/` / `\\`, or matched and forwarded as sent.
    encoded_slash: str = spec(one_of(REJECT, DECODE, KEEP), REJECT)


@dataclass(frozen=True)
class AccessLog:
    """One JSON object per line for each request, after its response."""

    path: str = spec(string(pattern=r"\S.*", hint='a file name or "stdout"'))
    format: str = spec(one_of("json"), "json")
    sample: float = spec(number(min=0.0, max=1.0), 1.0)  # of requests answered below 400
    slow_ms: float = spec(number(min=0.0), 0.0)  # slower than this: always logged (0: off)
    log_query: bool = spec(boolean, False)  # the query string in `path`


_access_log = record(AccessLog)


def access_log(value: Any, path: str, errors: Errors) -> Any:
    """`off` (or false, or ~), `stdout`, a file name, or the mapping."""
    if value is None or value is False or value == "off":
        return None
    if isinstance(value, str):
        return _access_log({"path": value}, path, errors)
    return _access_log(value, path, errors)


@dataclass(frozen=True)
class Admin:
    """The admin listener: health, readiness, metrics."""

    address: tuple[str, int] = spec(admin_address)
    # When set, everything but /healthz and /readyz needs `Authorization: Bearer TOKEN`.
    token: str | None = spec(
        string(
            pattern=r"[\x21-\x7e]{16,}",
            hint="a token of 16 or more printable characters, no spaces",
        ),
        None,
    )


_admin = record(Admin)


def admin(value: Any, path: str, errors: Errors) -> Any:
    """An address, or `{address, token}`."""
    if isinstance(value, str):
        parsed = admin_address(value, path, errors)
        return INVALID if parsed is INVALID else Admin(address=parsed)
    if not isinstance(value, dict):
        return errors.add(
            path, f"expected an address 'host:port' or {{address, token}}, got {describe(value)}"
        )
    return _admin(value, path, errors)


def workers(value: Any, path: str, errors: Errors) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    return errors.add(path, f'expected an integer >= 1 or "auto", got {describe(value)}')


@dataclass(frozen=True)
class Server:
    listen: tuple[Listener, ...] = spec(
        list_of(listener, min_len=1, allow_single=True), (Listener(("127.0.0.1", 8080)),)
    )
    workers: int | str = spec(workers, 1)
    admin: Admin | None = spec(admin, None)
    limits: Limits = spec(record(Limits), factory=Limits)
    timeouts: ServerTimeouts = spec(record(ServerTimeouts), factory=ServerTimeouts)
    paths: Paths = spec(record(Paths), factory=Paths)
    trusted_proxies: tuple[Network, ...] = spec(list_of(network), ())
    plugin_modules: tuple[str, ...] = spec(
        list_of(
            string(
                pattern=r"[A-Za-z_][\w.]*|.*\.py",
                hint="a Python module name, or a .py file (relative to the config file)",
            )
        ),
        (),
    )
    # Where durable local state (quota counts) is kept between runs.
    state_dir: str = spec(string(pattern=r".+", hint="a directory name"), "./fastgw-state")
    access_log: AccessLog | None = spec(access_log, None)


def target_url(value: Any, path: str, errors: Errors) -> Any:
    """`http://host:port` or `https://host:port`; the port is required so nothing is guessed."""
    if isinstance(value, str):
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = None
        if (
            parts.scheme in ("http", "https")
            and parts.hostname
            and port
            and parts.path in ("", "/")
            and not parts.query
            and not parts.username
        ):
            return (parts.scheme, parts.hostname, port)
    return errors.add(
        path,
        "expected a URL 'http://host:port' or 'https://host:port' such as "
        f"'http://127.0.0.1:9001', got {describe(value)}",
    )


@dataclass(frozen=True)
class Target:
    url: tuple[str, str, int] = spec(target_url)
    weight: int = spec(integer(min=0, max=10000), 1)


@dataclass(frozen=True)
class UpstreamTimeouts:
    connect: float = spec(duration, 2.0)
    read: float = spec(duration, 30.0)


@dataclass(frozen=True)
class Pool:
    max_idle: int = spec(integer(min=0), 64)
    idle_timeout: float = spec(duration, 60.0)


def ca_file(value: Any, path: str, errors: Errors) -> Any:
    """A PEM bundle of CA certificates (checked by loading it)."""
    if not isinstance(value, str):
        return errors.add(path, f"expected a file name, got {describe(value)}")
    try:
        ssl.create_default_context(cafile=value)
    except (OSError, ssl.SSLError) as exc:
        return errors.add(path, f"cannot load CA certificates from '{value}': {exc}")
    return value


FAILURE_OUTCOMES = ("connect_error", "timeout", "reset", "invalid")


def failure_kind(value: Any, path: str, errors: Errors) -> Any:
    """An outcome that counts against a target, or an upstream status 500-599."""
    if value in FAILURE_OUTCOMES or (
        isinstance(value, int) and not isinstance(value, bool) and 500 <= value <= 599
    ):
        return value
    return errors.add(
        path,
        f"expected {', '.join(FAILURE_OUTCOMES)} or a status 500-599, got {describe(value)}",
    )


@dataclass(frozen=True)
class PassiveHealth:
    """Outlier detection from the requests themselves (per worker)."""

    max_failures: int = spec(integer(min=1), 5)
    window: float = spec(positive_duration, 10.0)
    ejection: float = spec(positive_duration, 30.0)
    max_ejection: float = spec(positive_duration, 300.0)
    max_ejected_percent: int = spec(integer(min=0, max=100), 50)
    on: tuple[Any, ...] = spec(
        list_of(failure_kind, min_len=1), ("connect_error", "timeout", 502, 503, 504)
    )


def status_code(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return errors.add(path, f"expected a status 100-599, got {describe(value)}")


@dataclass(frozen=True)
class ActiveHealth:
    """Probes from one process of the gateway; every worker follows their verdict."""

    path: str = spec(string(pattern=r"/[^\s?#]*(\?[^\s#]*)?", hint="a path such as /health"), "/")
    interval: float = spec(positive_duration, 2.0)
    timeout: float = spec(positive_duration, 1.0)
    healthy: int = spec(integer(min=1), 2)  # consecutive passes that make a target healthy
    unhealthy: int = spec(integer(min=1), 3)  # consecutive failures that make it unhealthy
    expect_status: tuple[int, ...] = spec(list_of(status_code, min_len=1), (200,))
    host: str | None = spec(string(pattern=r"[A-Za-z0-9.\-:\[\]]+", hint="a host name"), None)
    initial: str = spec(one_of("healthy", "unhealthy"), "healthy")


@dataclass(frozen=True)
class HealthCheck:
    active: ActiveHealth | None = spec(optional(record(ActiveHealth)), None)
    passive: PassiveHealth | None = spec(optional(record(PassiveHealth)), None)


RETRY_OUTCOMES = ("timeout", "reset")


def retry_kind(value: Any, path: str, errors: Errors) -> Any:
    """An outcome or an upstream status (500-599) on which idempotent requests are retried."""
    if value in RETRY_OUTCOMES or (
        isinstance(value, int) and not isinstance(value, bool) and 500 <= value <= 599
    ):
        return value
    return errors.add(path, f"expected timeout, reset or a status 500-599, got {describe(value)}")


@dataclass(frozen=True)
class RetryBudget:
    """Retries add at most `ratio` of the upstream's request rate, plus `min_per_second`."""

    ratio: float = spec(number(min=0.0, max=100.0), 0.2)
    min_per_second: float = spec(number(min=0.0), 10.0)


@dataclass(frozen=True)
class CircuitBreaker:
    """Per target, counted over all workers: beyond a limit the request goes elsewhere or
    gets 503 at once."""

    max_connections: int = spec(integer(min=1), 1000)  # open or opening
    max_pending: int = spec(integer(min=0), 100)  # waiting for a connection (dialing)
    max_requests: int = spec(integer(min=1), 1000)  # in flight


BALANCERS = ("round_robin", "least_conn", "consistent_hash", "ewma")
HASH_KEYS = ("ip", "consumer", "path")


def hash_key(value: Any, path: str, errors: Errors) -> Any:
    """What a consistent_hash balancer hashes: one key part that varies between requests."""
    if isinstance(value, str) and (value in HASH_KEYS or NAMED_KEY.fullmatch(value)):
        return value
    return errors.add(
        path,
        f"expected ip, consumer, path, header:NAME, cookie:NAME or query:NAME, got {describe(value)}",
    )


@dataclass(frozen=True)
class Upstream:
    targets: tuple[Target, ...] = spec(list_of(record(Target), min_len=1))
    timeouts: UpstreamTimeouts = spec(record(UpstreamTimeouts), factory=UpstreamTimeouts)
    pool: Pool = spec(record(Pool), factory=Pool)
    tls_verify: bool = spec(boolean, True)  # for https:// targets
    ca: str | None = spec(optional(ca_file), None)  # default: the system's CAs
    balancer: str = spec(one_of(*BALANCERS), "round_robin")
    hash_on: str | None = spec(hash_key, None)  # what consistent_hash hashes
    ewma_decay: float = spec(positive_duration, 10.0)  # ewma's time constant
    health_check: HealthCheck = spec(record(HealthCheck), factory=HealthCheck)
    retries: int = spec(integer(min=0, max=10), 1)  # attempts after the first
    retry_on: tuple[Any, ...] = spec(list_of(retry_kind), ())
    retry_buffer: int = spec(size, 64 * 1024)  # request body kept for a replay (and mirrors)
    retry_non_idempotent: bool = spec(boolean, False)
    retry_budget: RetryBudget | None = spec(optional(record(RetryBudget)), factory=RetryBudget)
    circuit_breaker: CircuitBreaker | None = spec(optional(record(CircuitBreaker)), None)


def check_upstream(upstream: Upstream, path: str, errors: Errors) -> None:
    """`hash_on` goes with consistent_hash, and only with it."""
    if upstream.balancer == "consistent_hash" and upstream.hash_on is None:
        errors.add(
            f"{path}.hash_on",
            "required with balancer: consistent_hash (ip, consumer, path, header:NAME, "
            "cookie:NAME or query:NAME)",
        )
    elif upstream.balancer != "consistent_hash" and upstream.hash_on is not None:
        errors.add(
            f"{path}.hash_on",
            f"only consistent_hash uses hash_on (this upstream's balancer is {upstream.balancer})",
        )


_SEGMENT = r"(?:[^/{}*?#\s]+|\{[A-Za-z_][A-Za-z0-9_]*\})"
PATH_PATTERN = rf"/(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?(?:(?<=/)\*)?"
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"


@dataclass(frozen=True)
class Match:
    paths: tuple[str, ...] = spec(
        list_of(
            string(
                pattern=PATH_PATTERN,
                hint="a path starting with '/': segments, {param} segments, optionally ending in '/*'",
            ),
            min_len=1,
        )
    )
    methods: tuple[str, ...] | None = spec(
        list_of(string(pattern=_TOKEN, hint="an HTTP method such as GET"), min_len=1), None
    )
    hosts: tuple[str, ...] | None = spec(
        list_of(
            string(
                pattern=r"(?:\*\.)?[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*",
                hint="a host name such as 'api.example.com' or '*.example.com'",
                lower=True,
            ),
            min_len=1,
        ),
        None,
    )
    headers: dict[str, str] | None = spec(
        mapping_of(string(hint="a header value"), key_pattern=_TOKEN, key_hint="a header name"),
        None,
    )


upstream_name = string(hint="the name of an upstream")
STICKY_KEYS = ("ip", "consumer")


def sticky_key(value: Any, path: str, errors: Errors) -> Any:
    """What keeps a client on one side of a split."""
    if isinstance(value, str) and (
        value in STICKY_KEYS or (NAMED_KEY.fullmatch(value) and not value.startswith("query:"))
    ):
        return value
    return errors.add(
        path, f"expected cookie:NAME, header:NAME, ip or consumer, got {describe(value)}"
    )


@dataclass(frozen=True)
class SplitSide:
    upstream: str = spec(upstream_name)
    weight: int = spec(integer(min=0, max=10000))


@dataclass(frozen=True)
class Split:
    """Several upstreams, chosen per request by weight (canary, blue/green)."""

    split: tuple[SplitSide, ...] = spec(list_of(record(SplitSide), min_len=1))
    sticky: str | None = spec(sticky_key, None)  # a client stays on its side

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(side.upstream for side in self.split)


_split = record(Split)


def route_upstream(value: Any, path: str, errors: Errors) -> Any:
    """The name of an upstream, or a split between several."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return errors.add(
            path,
            f"expected the name of an upstream or {{split: [{{upstream, weight}}, ...]}}, got "
            f"{describe(value)}",
        )
    parsed = _split(value, path, errors)
    if parsed is INVALID:
        return parsed
    if not any(side.weight for side in parsed.split):
        return errors.add(join(path, "split"), "expected at least one weight above 0")
    if len(set(parsed.names)) != len(parsed.names):
        return errors.add(join(path, "split"), "each upstream may appear once")
    return parsed


@dataclass(frozen=True)
class Mirror:
    """A copy of sampled requests to a shadow upstream, whose answers are discarded."""

    upstream: str = spec(upstream_name)
    percent: float = spec(number(min=0.0, max=100.0), 100.0)
    max_in_flight: int = spec(integer(min=1), 100)  # copies at once, per worker


@dataclass(frozen=True)
class Route:
    match: Match = spec(record(Match))
    upstream: str | Split = spec(route_upstream)
    mirror: Mirror | None = spec(optional(record(Mirror)), None)
    name: str | None = spec(
        string(pattern=r"[A-Za-z0-9_.\-]+", hint="a name of letters, digits, '_', '-', '.'"), None
    )
    strip_prefix: bool = spec(boolean, False)
    preserve_host: bool = spec(boolean, True)
    plugins: dict[str, PluginEntry] = spec(parse_plugins, factory=dict)

    def upstream_names(self) -> tuple[tuple[str, str], ...]:
        """(key path, upstream name) of every upstream the route names."""
        if isinstance(self.upstream, str):
            named = [("upstream", self.upstream)]
        else:
            named = [
                (f"upstream.split[{i}].upstream", n) for i, n in enumerate(self.upstream.names)
            ]
        if self.mirror is not None:
            named.append(("mirror.upstream", self.mirror.upstream))
        return tuple(named)


def otlp_endpoint(value: Any, path: str, errors: Errors) -> Any:
    """An OTLP/HTTP traces URL, usable only with the protobuf classes of the otel extra."""
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return errors.add(
            path,
            "expected the collector's OTLP/HTTP traces URL such as "
            f"'http://127.0.0.1:4318/v1/traces', got {describe(value)}",
        )
    if not otlp.available():
        return errors.add(
            path,
            "exporting spans needs the OpenTelemetry protocol package, not installed here: "
            "pip install 'fastgw[otel]'",
        )
    return value


@dataclass(frozen=True)
class Tracing:
    """W3C trace context propagation and span export (observe/tracing.py, observe/otlp.py)."""

    response_header: bool = spec(boolean, False)  # the traceparent in responses too
    sample_ratio: float = spec(number(min=0.0, max=1.0), 1.0)  # the flag of started traces
    otlp_endpoint: str | None = spec(optional(otlp_endpoint), None)  # None: no export
    service_name: str = spec(string(pattern=r".+", hint="a service name"), "fastgw")


@dataclass(frozen=True)
class MetricsSettings:
    """`metrics:` (counted when the admin listener is set)."""

    consumer_label: bool = spec(boolean, False)  # `consumer` on fastgw_requests_total


@dataclass(frozen=True)
class Config:
    server: Server = spec(record(Server), factory=Server)
    upstreams: dict[str, Upstream] = spec(
        mapping_of(
            record(Upstream),
            key_pattern=r"[A-Za-z0-9_.\-]+",
            key_hint="a name of letters, digits, '_', '-', '.'",
        ),
        factory=dict,
    )
    routes: tuple[Route, ...] = spec(list_of(record(Route)), ())
    plugins: dict[str, PluginEntry] = spec(parse_plugins, factory=dict)
    consumers: tuple[Consumer, ...] = ()
    redis: RedisSettings | None = None
    plans: dict[str, Plan] = field(default_factory=dict)
    tracing: Tracing | None = None
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


parse_server = record(Server)
parse_upstream = record(Upstream)
parse_route = record(Route)
parse_tracing = optional(record(Tracing))
parse_metrics = record(MetricsSettings)
