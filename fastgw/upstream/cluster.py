"""Clusters: an upstream of one config (Envoy's cluster), its hosts and all its policy.

Per-request settings (timeouts, the balancer) come from the cluster the request was routed to,
never from a connection; a cluster is rebuilt at each load while its hosts carry over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .balancer import ConsistentHash, LeastConn, PeakEwma, RoundRobin

if TYPE_CHECKING:
    from ..config.schema import Upstream
    from .host import Host


class Cluster:
    __slots__ = ("balancer", "connect_timeout", "hosts", "name", "read_timeout", "reads_request")

    def __init__(
        self, name: str, hosts: list[Host], upstream: Upstream, key: Any = None, now: float = 0.0
    ) -> None:
        """`key` reads what consistent_hash hashes from a request; `now` is the loop's time."""
        self.name = name
        self.hosts = hosts
        weights = [target.weight for target in upstream.targets]
        kind = upstream.balancer
        if kind == "least_conn":
            self.balancer: Any = LeastConn(hosts, weights)
        elif kind == "consistent_hash":
            self.balancer = ConsistentHash(hosts, weights, key)
        elif kind == "ewma":
            self.balancer = PeakEwma(hosts, weights, upstream.ewma_decay, now)
        else:
            self.balancer = RoundRobin(hosts, weights)
        # The balancer reads the request (its consumer, its client address): routes to this
        # cluster set up the request's plugin state even without plugins.
        self.reads_request = kind == "consistent_hash"
        self.connect_timeout = upstream.timeouts.connect
        self.read_timeout = upstream.timeouts.read
