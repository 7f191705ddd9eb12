"""The Runtime: an immutable snapshot of a compiled config that requests only read.

Everything a request needs that does not depend on the request is computed here, once per
load: the router, per-route flags, balancers and endpoint references.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config.loader import build_router
from .config.schema import Config, Limits, ServerTimeouts
from .router import Router
from .upstream.balancer import RoundRobin
from .upstream.pool import Registry

# A local handler answers a request itself: (status, content type, body).
LocalHandler = Callable[[Any], tuple[int, bytes, bytes]]


class UpstreamGroup:
    __slots__ = ("balancer", "connect_timeout", "endpoints", "name", "read_timeout")

    def __init__(
        self, name: str, endpoints: list[Any], weights: list[int], connect: float, read: float
    ) -> None:
        self.name = name
        self.endpoints = endpoints
        self.balancer = RoundRobin(endpoints, weights)
        self.connect_timeout = connect
        self.read_timeout = read


class CompiledRoute:
    __slots__ = ("group", "index", "local", "name", "preserve_host", "strip_prefix")

    def __init__(
        self,
        name: str,
        index: int,
        group: UpstreamGroup | None,
        strip_prefix: bool = False,
        preserve_host: bool = True,
        local: LocalHandler | None = None,
    ) -> None:
        self.name = name
        self.index = index
        self.group = group
        self.strip_prefix = strip_prefix
        self.preserve_host = preserve_host
        self.local = local


class Runtime:
    __slots__ = ("digest", "groups", "limits", "router", "routes", "timeouts", "version")

    def __init__(
        self,
        router: Router,
        routes: list[CompiledRoute],
        groups: dict[str, UpstreamGroup],
        limits: Limits,
        timeouts: ServerTimeouts,
        version: int = 0,
        digest: str = "",
    ) -> None:
        self.router = router
        self.routes = routes
        self.groups = groups
        self.limits = limits
        self.timeouts = timeouts
        self.version = version
        self.digest = digest


def compile_runtime(
    config: Config, registry: Registry, version: int = 0, digest: str = ""
) -> Runtime:
    """Build the snapshot; endpoints come from (and are kept in) the worker's registry."""
    groups: dict[str, UpstreamGroup] = {}
    used: set[tuple[str, int]] = set()
    for name, upstream in config.upstreams.items():
        endpoints = []
        for target in upstream.targets:
            _, host, port = target.url
            endpoint = registry.get(host, port)
            endpoint.configure(upstream.pool)
            endpoints.append(endpoint)
            used.add((host, port))
        weights = [t.weight for t in upstream.targets]
        groups[name] = UpstreamGroup(
            name, endpoints, weights, upstream.timeouts.connect, upstream.timeouts.read
        )
    registry.retain(used)
    compiled = [
        CompiledRoute(
            route.name or f"routes[{i}]",
            i,
            groups[route.upstream],
            route.strip_prefix,
            route.preserve_host,
        )
        for i, route in enumerate(config.routes)
    ]
    router, _ = build_router(config.routes, compiled)
    return Runtime(
        router, compiled, groups, config.server.limits, config.server.timeouts, version, digest
    )


def local_runtime(
    paths: dict[str, LocalHandler], limits: Limits, timeouts: ServerTimeouts
) -> Runtime:
    """A runtime whose routes the gateway answers itself (the admin listener)."""
    router = Router()
    routes = []
    for i, (path, handler) in enumerate(paths.items()):
        route = CompiledRoute(path, i, None, local=handler)
        routes.append(route)
        router.add(route, i, path, ("GET",), None, None)
    router.finish()
    return Runtime(router, routes, {}, limits, timeouts)
