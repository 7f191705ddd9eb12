"""The Runtime: an immutable snapshot of a compiled config that requests only read.

Everything a request needs that does not depend on the request is computed here, once per
load: the router, per-route flags, balancers and endpoint references.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config.loader import build_router
from .config.schema import Config, Limits, ServerTimeouts
from .http.addresses import Networks
from .http.headers import REQUEST_KINDS, by_sent_name
from .plugins.base import Build
from .plugins.chain import EMPTY, Chain, ChainBuilder
from .plugins.consumers import ConsumerIndex
from .plugins.services import Services
from .router import Router
from .upstream.balancer import RoundRobin
from .upstream.pool import EndpointKey, Registry

# A local handler answers a request itself: (status, content type, body).
LocalHandler = Callable[[Any], tuple[int, bytes, bytes]]


class UpstreamGroup:
    __slots__ = ("balancer", "connect_timeout", "read_timeout")

    def __init__(
        self, endpoints: list[Any], weights: list[int], connect: float, read: float
    ) -> None:
        self.balancer = RoundRobin(endpoints, weights)
        self.connect_timeout = connect
        self.read_timeout = read


class CompiledRoute:
    __slots__ = (
        "access",
        "group",
        "hooked",
        "local",
        "log",
        "name",
        "preserve_host",
        "response",
        "strip_prefix",
    )

    def __init__(
        self,
        name: str,
        group: UpstreamGroup | None,
        strip_prefix: bool = False,
        preserve_host: bool = True,
        local: LocalHandler | None = None,
        chain: Chain = EMPTY,
    ) -> None:
        self.name = name
        self.group = group
        self.strip_prefix = strip_prefix
        self.preserve_host = preserve_host
        self.local = local
        # PERF: the plugin hooks bound per phase; an empty tuple skips the phase entirely.
        self.access = chain.access
        self.response = chain.response
        self.log = chain.log
        self.hooked = bool(chain.access or chain.response or chain.log)


BASE_HEADER_KINDS = by_sent_name(REQUEST_KINDS)


class Runtime:
    __slots__ = ("consumers", "header_kinds", "limits", "plugins", "router", "timeouts", "trusted")

    def __init__(
        self,
        router: Router,
        limits: Limits,
        timeouts: ServerTimeouts,
        header_kinds: dict[bytes, int | None] = BASE_HEADER_KINDS,
        trusted: Networks | None = None,
        plugins: list[Any] | None = None,
        consumers: ConsumerIndex | None = None,
    ) -> None:
        self.router = router
        self.consumers = consumers or ConsumerIndex(())
        self.limits = limits
        self.timeouts = timeouts
        self.header_kinds = header_kinds  # how ClientProtocol sorts each request field
        self.trusted = trusted or Networks(())
        self.plugins = plugins or []

    def close(self) -> None:
        """A newer runtime replaced this one: its plugins stop their background work."""
        for plugin in self.plugins:
            plugin.close()


def compile_runtime(config: Config, registry: Registry, services: Services) -> Runtime:
    """Build the snapshot; endpoints come from (and are kept in) the worker's registry."""
    groups: dict[str, UpstreamGroup] = {}
    used: set[EndpointKey] = set()
    for name, upstream in config.upstreams.items():
        endpoints = []
        for target in upstream.targets:
            scheme, host, port = target.url
            tls = (upstream.ca, upstream.tls_verify) if scheme == "https" else None
            key = (host, port, tls)
            endpoint = registry.get(key)
            endpoint.configure(upstream.pool)
            endpoints.append(endpoint)
            used.add(key)
        weights = [t.weight for t in upstream.targets]
        groups[name] = UpstreamGroup(
            endpoints, weights, upstream.timeouts.connect, upstream.timeouts.read
        )
    registry.retain(used)
    watched: dict[bytes, int] = {}
    consumers = ConsumerIndex(config.consumers)
    build = Build(consumers, services, watched)
    chains = ChainBuilder(config.plugins, build)
    compiled = [
        CompiledRoute(
            route.name or f"routes[{i}]",
            groups[route.upstream],
            route.strip_prefix,
            route.preserve_host,
            chain=chains.chain_for(route.plugins),
        )
        for i, route in enumerate(config.routes)
    ]
    services.retain()
    router, _ = build_router(config.routes, compiled)
    header_kinds = by_sent_name({**watched, **REQUEST_KINDS}) if watched else BASE_HEADER_KINDS
    return Runtime(
        router,
        config.server.limits,
        config.server.timeouts,
        header_kinds,
        Networks(config.server.trusted_proxies),
        chains.plugins(),
        consumers,
    )


def local_runtime(
    paths: dict[str, LocalHandler], limits: Limits, timeouts: ServerTimeouts
) -> Runtime:
    """A runtime whose routes the gateway answers itself (the admin listener)."""
    router = Router()
    for i, (path, handler) in enumerate(paths.items()):
        router.add(CompiledRoute(path, None, local=handler), i, path, ("GET",), None, None)
    router.finish()
    return Runtime(router, limits, timeouts)
