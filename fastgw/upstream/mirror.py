"""Mirroring: a copy of sampled requests goes to a shadow upstream; its answer is discarded.

A copy is its own attempt on a host of the shadow cluster (its completion point feeds that
host's health and EWMA like any attempt), but nothing of it ever reaches the client, and
nothing the real request does waits for it: the copy is sent once the gateway holds the
whole request (at once for a request without a body), and a failing, slow or absent shadow
costs only the copy. A body larger than the shadow upstream's `retry_buffer` is not copied.
At most `max_in_flight` copies run at once per worker; the others are dropped and counted
(`Mirror.dropped`, with a log line at most every 10 s).
"""

from __future__ import annotations

import logging
from random import random
from typing import Any

from ..logs import Throttled
from .outcomes import CONNECT_ERROR, OK

log = logging.getLogger("fastgw.mirror")
dropped_log = Throttled(log, 10.0)


class Mirror:
    """A route's mirror: the shadow cluster, the sample and the copies in flight."""

    __slots__ = ("cluster", "dropped", "fraction", "in_flight", "max_in_flight", "sent")

    def __init__(self, cluster: Any, percent: float, max_in_flight: int) -> None:
        self.cluster = cluster
        self.fraction = percent / 100.0
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.sent = 0  # copies started (per worker, for tests and metrics)
        self.dropped = 0  # copies not sent: too many in flight, no target, body too large

    def sampled(self) -> bool:
        return self.fraction >= 1.0 or random() < self.fraction

    def send(self, ex: Any, body: list[bytes]) -> None:
        """Send a copy of the exchange's request with `body` (its pieces as forwarded)."""
        if self.in_flight >= self.max_in_flight:
            self.drop("max_in_flight copies are in flight")
            return
        host = self.cluster.balancer.pick(ex)
        if host is None:
            self.drop("no target available")
            return
        self.sent += 1
        Copy(self, host, [ex.head_for(host), *body], ex.is_head).start()

    def drop(self, why: str) -> None:
        self.dropped += 1
        dropped_log.warning(
            "mirror to upstream %s: a copy dropped (%s; %d dropped so far in this worker)",
            self.cluster.name,
            why,
            self.dropped,
        )


class Copy:
    """One copy in flight: an attempt on a shadow host that answers to no client."""

    __slots__ = ("data", "head_at", "host", "is_head", "live", "mirror", "started_at")

    def __init__(self, mirror: Mirror, host: Any, data: list[bytes], is_head: bool) -> None:
        self.mirror = mirror
        self.host = host
        self.data = data
        self.is_head = is_head
        self.live = False
        self.started_at = self.head_at = 0.0

    def start(self) -> None:
        host = self.host
        self.mirror.in_flight += 1
        host.in_flight += 1
        self.live = True
        self.started_at = host.loop.time()
        conn = host.acquire()
        if conn is not None:
            self.attach(conn)
        else:
            host.dial(self, self.mirror.cluster.connect_timeout)

    def attach(self, conn: Any) -> None:
        conn.dispatch(self, self.host.loop.time(), self.mirror.cluster.read_timeout)
        conn.transport.writelines(self.data)
        self.data = []

    def finish(self, outcome: str, now: float, conn: Any = None, reusable: bool = False) -> None:
        if not self.live:
            return
        self.live = False
        self.mirror.in_flight -= 1
        started = self.started_at
        head = self.head_at - started if self.head_at else -1.0
        self.host.attempt_ended(outcome, 0.0, head, now - started, now, conn, reusable)

    # -- Dialing -----------------------------------------------------------------------

    def connected(self, host: Any, conn: Any) -> None:
        self.attach(conn)

    def connect_failed(self, host: Any, why: str, detail: str) -> None:
        self.finish(CONNECT_ERROR, host.loop.time())

    # -- Receiver: the answer is read and discarded --------------------------------------

    def response_head(self, status: int, fields: list[bytes], framing: int, now: float) -> bool:
        self.head_at = now
        return self.is_head

    def response_body(self, data: bytes) -> None:
        pass

    def response_read(self) -> None:
        pass

    def response_end(self, conn: Any, reusable: bool, trailers: Any, now: float) -> None:
        self.finish(OK, now, conn, reusable)

    def upstream_failed(self, conn: Any, outcome: str, now: float) -> None:
        self.finish(outcome, now)

    def upstream_write_paused(self) -> None:
        pass

    def upstream_write_resumed(self) -> None:
        pass

    def tunnel_started(self, conn: Any, rest: bytes) -> None:
        conn.abort()  # never sent an upgrade; an upstream that switches anyway is cut off
        self.finish(OK, self.host.loop.time())

    def tunnel_ended(self, now: float) -> None:
        pass

    def waiting_on_client(self) -> bool:
        return False
