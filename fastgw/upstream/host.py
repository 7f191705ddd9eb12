"""Hosts: one target of one upstream, with its pool of idle connections and its state.

A host belongs to exactly one upstream and carries that upstream's per-target state: the
requests in flight now (peak EWMA, health and breaker state join it). Every attempt on a host
ends in one call, `Host.attempt_ended`, whatever the outcome. Hosts live in a per-worker
registry and survive a reload when their upstream's name, their address and the TLS settings
are unchanged; connections are never shared between upstreams, so each upstream's pool limits
hold exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import ssl
from typing import TYPE_CHECKING, Any, Protocol

from ..counters import WorkerCounters
from ..tls import client_context
from .breaker import FIELDS, Breaker
from .health import Passive
from .outcomes import CLIENT_ABORT, OK
from .protocol import UpstreamProtocol

if TYPE_CHECKING:
    from ..config.schema import Upstream

log = logging.getLogger("fastgw.upstream")

# Why a dial failed, as `Dialing.connect_failed` hears it.
DIAL_TIMEOUT = "timeout"
DIAL_REFUSED = "refused"
DIAL_TLS = "tls"
DIAL_NO_DESCRIPTORS = "descriptors"
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class Dialing(Protocol):
    """Who waits for a dial (the exchange)."""

    def connected(self, host: Host, conn: UpstreamProtocol) -> None: ...

    def connect_failed(self, host: Host, why: str, detail: str) -> None: ...


class Rotation(Protocol):
    """What a host needs of its cluster (upstream/cluster.py) when its health changes."""

    def rotate(self, now: float | None = None) -> None: ...

    def may_eject(self, host: Host, max_percent: int) -> bool: ...


class Host:
    """One target of one upstream: a LIFO of idle connections (the warmest first), a dialer,
    and the target's state."""

    __slots__ = (
        "active_ok",
        "address",
        "breaker",
        "cluster",
        "connections",
        "dialing",
        "ewma",
        "ewma_at",
        "ewma_decay",
        "health",
        "host_line",
        "idle",
        "idle_timeout",
        "in_flight",
        "label",
        "loop",
        "max_idle",
        "metrics",
        "port",
        "retired",
        "tls",
        "upstream",
        "watched",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        upstream: str,
        address: str,
        port: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = loop
        self.upstream = upstream
        self.address = address
        self.port = port
        self.tls = tls  # https: verified (unless configured off), SNI = the target's host
        self.label = f"{'https://' if tls else ''}{address}:{port}"
        # The end of a request line and the Host field, for heads sent to this target.
        authority = (f"[{address}]" if ":" in address else address).encode() + b":%d" % port
        self.host_line = b" HTTP/1.1\r\nHost: " + authority + b"\r\n"
        self.idle: list[UpstreamProtocol] = []
        self.max_idle = 64
        self.idle_timeout = 60.0
        self.in_flight = 0  # attempts started and not ended
        self.connections = 0  # open connections, idle or in use
        self.dialing = 0  # connections being opened
        self.breaker: Breaker | None = None  # its upstream's circuit_breaker, if any
        self.metrics: Any = None  # its counters (observe/metrics.py), when metrics are on
        self.retired = False  # no live config names it: connections close when released
        # Peak-EWMA of the time to the response head (seconds; -1: none yet) and when it was
        # last updated; kept only when its upstream balances by it (ewma_decay > 0).
        self.ewma = -1.0
        self.ewma_at = 0.0
        self.ewma_decay = 0.0
        self.health: Passive | None = None  # passive health, when its upstream checks it
        self.active_ok = True  # the active probes' verdict (upstream/probes.py)
        self.watched = False  # the completion point feeds the EWMA or passive health
        self.cluster: Rotation | None = None  # the cluster of the live config that names it

    def configure(self, upstream: Upstream, breaker: Breaker | None = None) -> None:
        """Its upstream's settings (at each load)."""
        pool = upstream.pool
        self.max_idle = pool.max_idle
        self.idle_timeout = pool.idle_timeout
        self.ewma_decay = upstream.ewma_decay if upstream.balancer == "ewma" else 0.0
        passive = upstream.health_check.passive
        if passive is None or self.health is None or self.health.settings != passive:
            # New or changed settings start afresh; unchanged ones keep the target's state.
            if self.health is not None:
                self.health.close()
            self.health = Passive(passive) if passive is not None else None
        self.breaker = breaker
        if breaker is not None:
            breaker.publish(self)
        self.count_with(self.metrics)
        while len(self.idle) > self.max_idle:
            self.idle.pop(0).transport.close()

    def count_with(self, metrics: Any) -> None:
        """Its counters of this load (None: metrics are off). The completion point does the
        per-attempt work (EWMA, health, breaker, metrics) only for a host that needs one."""
        self.metrics = metrics
        self.watched = (
            bool(self.ewma_decay)
            or self.health is not None
            or self.breaker is not None
            or metrics is not None
        )

    # -- attempts ----------------------------------------------------------------------

    def attempt_ended(
        self,
        outcome: str,
        connect: float,
        head: float,
        total: float,
        now: float,
        conn: UpstreamProtocol | None = None,
        reusable: bool = False,
    ) -> None:
        """The one completion point of an attempt (see outcomes.py): `connect` is the time to
        a usable connection (0 for a pooled one), `head` the time to the response head (-1 if
        none came), `total` the attempt's duration, in seconds. `conn`, given when the response
        ended cleanly, goes back to the pool if `reusable` (its parser still has the status)."""
        self.in_flight -= 1
        if self.watched:
            if self.breaker is not None:
                self.breaker.publish(self)
            status = conn.parser.get_status_code() if conn is not None else 0
            if self.metrics is not None:
                self.metrics.attempt(outcome, status, total)
            if outcome != CLIENT_ABORT:  # a client going away says nothing about the target
                if self.ewma_decay:
                    self.observe(head if outcome == OK else total, outcome == OK, now)
                if self.health is not None:
                    self.health.judge(self, outcome, status, now)
        if conn is not None:
            if reusable:
                self.release(conn, now)
            else:
                conn.transport.close()

    def observe(self, seconds: float, ok: bool, now: float) -> None:
        """A new sample for the peak-EWMA: a slower one is taken at once (the peak), a faster
        one pulls the estimate down with time constant `ewma_decay`. A failure counts as at
        least twice the current estimate, so a failing target quickly looks expensive."""
        ewma = self.ewma
        if not ok:
            seconds = max(seconds, 2 * ewma)
        if seconds >= ewma:
            self.ewma = seconds
        else:
            weight = math.exp((self.ewma_at - now) / self.ewma_decay)
            self.ewma = ewma * weight + seconds * (1.0 - weight)
        self.ewma_at = now

    def rotate(self) -> None:
        """Its health changed: the live cluster rebuilds its rotation."""
        if self.cluster is not None:
            self.cluster.rotate()

    # -- the pool ----------------------------------------------------------------------

    def acquire(self) -> UpstreamProtocol | None:
        """An idle connection that is still open, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.transport.is_closing():
                return conn
        return None

    def release(self, conn: UpstreamProtocol, now: float) -> None:
        """Keep a connection whose last exchange ended cleanly, if there is room."""
        if len(self.idle) < self.max_idle and not self.retired and not conn.transport.is_closing():
            conn.park(now, self.idle_timeout)
            self.idle.append(conn)
        else:
            conn.transport.close()

    def forget(self, conn: UpstreamProtocol) -> None:
        """An idle connection closed or expired: take it out of the pool."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def opened(self) -> None:
        self.connections += 1

    def lost(self, conn: UpstreamProtocol) -> None:
        self.connections -= 1
        if conn.exchange is None:
            self.forget(conn)
        if self.breaker is not None:
            self.breaker.publish(self)

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().transport.close()

    def dial(self, requester: Dialing, timeout: float) -> None:
        """Open a new connection; report to `requester.connected` or `.connect_failed`."""
        loop = self.loop
        self.dialing += 1
        if self.breaker is not None:
            self.breaker.publish(self)
        task = loop.create_task(
            loop.create_connection(
                lambda: UpstreamProtocol(self),
                self.address,
                self.port,
                ssl=self.tls,
                server_hostname=self.address if self.tls is not None else None,
            )
        )
        timer = loop.call_later(timeout, task.cancel)

        def done(task: asyncio.Task) -> None:
            timer.cancel()
            self.dialing -= 1
            if self.breaker is not None:
                self.breaker.publish(self)
            if task.cancelled():
                requester.connect_failed(self, DIAL_TIMEOUT, f"no connection within {timeout:g}s")
                return
            exc = task.exception()
            if exc is None:
                transport, conn = task.result()
                if transport.is_closing():  # the peer closed it at once (the target died)
                    requester.connect_failed(self, DIAL_REFUSED, "closed as soon as it opened")
                else:
                    requester.connected(self, conn)
            elif isinstance(exc, ssl.SSLError):
                requester.connect_failed(self, DIAL_TLS, str(exc))
            elif isinstance(exc, OSError) and exc.errno in _OUT_OF_DESCRIPTORS:
                requester.connect_failed(self, DIAL_NO_DESCRIPTORS, str(exc))
            else:
                requester.connect_failed(self, DIAL_REFUSED, str(exc))

        task.add_done_callback(done)


# A host's key: its upstream, its address, and for https the TLS settings (CA file, verify).
HostKey = tuple[str, str, int, tuple[str | None, bool] | None]


class Hosts:
    """The hosts of one worker, by key; reloads keep those whose key is unchanged."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        counters: WorkerCounters | None = None,
        worker: int = 0,
    ) -> None:
        """`counters`: the gateway's shared breaker counts (one worker's own if None)."""
        self.loop = loop
        self.counters = counters
        self.worker = worker
        self.hosts: dict[HostKey, Host] = {}
        # TLS client contexts of the load in progress, one per (CA file, verify): CA files are
        # read again at each load; connections already open keep the context they made.
        self.contexts: dict[tuple[str | None, bool], ssl.SSLContext] = {}

    def host(self, upstream_name: str, url: tuple[str, str, int], upstream: Upstream) -> Host:
        """The host for one target of an upstream, configured with the upstream's settings."""
        scheme, address, port = url
        tls = (upstream.ca, upstream.tls_verify) if scheme == "https" else None
        context = None
        if tls is not None:
            context = self.contexts.get(tls)
            if context is None:
                context = self.contexts[tls] = client_context(*tls)
        key = (upstream_name, address, port, tls)
        host = self.hosts.get(key)
        if host is None:
            host = self.hosts[key] = Host(self.loop, upstream_name, address, port, context)
        host.tls = context
        breaker = None
        if upstream.circuit_breaker is not None:
            if self.counters is None:
                self.counters = WorkerCounters(FIELDS, 1)
            name = (upstream_name, host.label)
            breaker = Breaker(name, upstream.circuit_breaker, self.counters, self.worker)
        host.configure(upstream, breaker)
        return host

    def retain(self, used: set[Host]) -> None:
        """End a load: retire the hosts it did not name (their idle connections close, those in
        use close when released)."""
        self.contexts = {}
        for key, host in list(self.hosts.items()):
            if host not in used:
                del self.hosts[key]
                host.retired = True
                host.close_idle()

    def close_all(self) -> None:
        for host in self.hosts.values():
            host.close_idle()

    def find(self, upstream_name: str, address: str, port: int) -> Host | None:
        """The host of one target (for tests and the admin views)."""
        for key, host in self.hosts.items():
            if key[:3] == (upstream_name, address, port):
                return host
        return None


def describe_dial_failure(why: str) -> tuple[int, str]:
    """The status and message a client gets when the last dial failed this way."""
    if why == DIAL_TIMEOUT:
        return 504, "upstream connect timed out"
    if why == DIAL_TLS:
        return 502, "upstream TLS handshake failed"
    if why == DIAL_NO_DESCRIPTORS:
        return 503, "gateway out of file descriptors"
    return 502, "upstream refused the connection"
