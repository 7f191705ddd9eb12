"""Clusters: an upstream of one config (Envoy's cluster), its hosts and all its policy.

Per-request settings (timeouts, the balancer) come from the cluster the request was routed to,
never from a connection; a cluster is rebuilt at each load while its hosts carry over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .balancer import RoundRobin

if TYPE_CHECKING:
    from ..config.schema import Upstream
    from .host import Host


class Cluster:
    __slots__ = ("balancer", "connect_timeout", "hosts", "name", "read_timeout")

    def __init__(self, name: str, hosts: list[Host], upstream: Upstream) -> None:
        self.name = name
        self.hosts = hosts
        self.balancer = RoundRobin(hosts, [target.weight for target in upstream.targets])
        self.connect_timeout = upstream.timeouts.connect
        self.read_timeout = upstream.timeouts.read
