"""Clusters: an upstream of one config (Envoy's cluster), its hosts and all its policy.

Per-request settings (timeouts, the balancer) come from the cluster the request was routed to,
never from a connection; a cluster is rebuilt at each load while its hosts carry over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .balancer import ConsistentHash, LeastConn, PeakEwma, RoundRobin
from .breaker import Breaking
from .health import IN_ROTATION, Guarded
from .outcomes import RESET, TIMEOUT

if TYPE_CHECKING:
    from ..config.schema import Upstream
    from .budget import Budget
    from .host import Host

# Methods retried on `retry_on` outcomes without `retry_non_idempotent` (RFC 9110 9.2.2).
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))


class Cluster:
    __slots__ = (
        "balancer",
        "budget",
        "connect_timeout",
        "hosts",
        "key",
        "metrics",
        "name",
        "read_timeout",
        "reads_request",
        "retries",
        "retry_any_method",
        "retry_buffer",
        "retry_outcomes",
        "retry_statuses",
        "upstream",
        "weights",
    )

    def __init__(
        self,
        name: str,
        hosts: list[Host],
        upstream: Upstream,
        key: Any = None,
        now: float = 0.0,
        budget: Budget | None = None,
    ) -> None:
        """`key` reads what consistent_hash hashes from a request; `now` is the loop's time;
        `budget` is the upstream's retry budget (None: retries are not budgeted)."""
        self.name = name
        self.hosts = hosts
        self.upstream = upstream
        self.key = key
        self.weights = [target.weight for target in upstream.targets]
        # The balancer reads the request (its consumer, its client address): routes to this
        # cluster set up the request's plugin state even without plugins.
        self.reads_request = upstream.balancer == "consistent_hash"
        self.connect_timeout = upstream.timeouts.connect
        self.read_timeout = upstream.timeouts.read
        self.retries = upstream.retries
        self.retry_statuses = frozenset(k for k in upstream.retry_on if isinstance(k, int))
        self.retry_outcomes = frozenset(k for k in upstream.retry_on if k in (TIMEOUT, RESET))
        self.retry_any_method = upstream.retry_non_idempotent
        self.retry_buffer = upstream.retry_buffer
        self.budget = budget
        self.metrics: Any = None  # its retry counter (observe/metrics.py), when metrics are on
        for host in hosts:
            host.cluster = self
        self.balancer: Any = None
        self.rotate(now)

    def rotate(self, now: float | None = None) -> None:
        """(Re)build the balancer over the targets in rotation: those with a weight above 0
        that neither active nor passive health took out. Each health change calls it;
        requests pay nothing."""
        live = [
            (host, weight)
            for host, weight in zip(self.hosts, self.weights, strict=True)
            if weight > 0
            and host.active_ok
            and (host.health is None or host.health.state in IN_ROTATION)
        ]
        hosts = [host for host, _ in live]
        weights = [weight for _, weight in live]
        for host in self.hosts:
            if host.metrics is not None:
                host.metrics.set_healthy(host in hosts)
        kind = self.upstream.balancer
        if kind == "least_conn":
            balancer: Any = LeastConn(hosts, weights)
        elif kind == "consistent_hash":
            balancer = ConsistentHash(hosts, weights, self.key)
        elif kind == "ewma":
            when = now if now is not None else (hosts[0].loop.time() if hosts else 0.0)
            balancer = PeakEwma(hosts, weights, self.upstream.ewma_decay, when)
        else:
            balancer = RoundRobin(hosts, weights)
        if self.upstream.circuit_breaker is not None:
            balancer = Breaking(balancer)
        if self.upstream.health_check.passive is not None:
            balancer = Guarded(balancer)
        self.balancer = balancer

    def may_retry(self, method: bytes, attempts: int, now: float) -> bool:
        """Whether a request that reached a target may be sent again (its body aside)."""
        return (
            attempts <= self.retries
            and (self.retry_any_method or method in IDEMPOTENT)
            and (self.budget is None or self.budget.allow(now))
        )

    def may_eject(self, host: Host, max_percent: int) -> bool:
        """Whether one more target may leave: at most `max_percent` of them are out at once."""
        out = sum(
            1
            for other in self.hosts
            if other is not host and other.health and other.health.state not in IN_ROTATION
        )
        return (out + 1) * 100 <= max_percent * len(self.hosts)
