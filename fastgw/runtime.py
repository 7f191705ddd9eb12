"""The Runtime: an immutable snapshot of a compiled config that requests only read.

Everything a request needs that does not depend on the request is computed here, once per
load: the router, per-route flags and plugin hooks, the upstream clusters and their hosts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config.loader import build_router
from .config.schema import AccessLog as AccessLogSettings
from .config.schema import Config, Limits, ServerTimeouts, Split
from .config.schema import Mirror as MirrorSettings
from .config.schema import Tracing as TracingSettings
from .http.addresses import Networks
from .http.headers import K_TRACEPARENT, REQUEST_KINDS, by_sent_name
from .observe.access_log import AccessLog
from .observe.appender import Appender
from .observe.observers import Observers, route_observer
from .observe.otlp import OtlpExporter
from .observe.tracing import Tracing
from .plugins.base import Build, Phase
from .plugins.chain import EMPTY, Chain, ChainBuilder
from .plugins.consumers import ConsumerIndex
from .plugins.keys import key_reader
from .plugins.services import Services
from .router import Router
from .upstream.cluster import Cluster
from .upstream.host import Hosts
from .upstream.mirror import Mirror
from .upstream.split import Splitter

# A local handler answers a request itself: (status, content type, body).
LocalHandler = Callable[[Any], tuple[int, bytes, bytes]]


class CompiledRoute:
    __slots__ = (
        "access",
        "body",
        "cluster",
        "fields",
        "hooked",
        "local",
        "log",
        "max_body",
        "mirror",
        "name",
        "preserve_host",
        "reframe",
        "response",
        "split",
        "strip_prefix",
    )

    def __init__(
        self,
        name: str,
        cluster: Cluster | None,
        strip_prefix: bool = False,
        preserve_host: bool = True,
        local: LocalHandler | None = None,
        chain: Chain = EMPTY,
        max_body: int = 0,
        split: Splitter | None = None,
        mirror: Mirror | None = None,
        observers: tuple[Callable[[Any], None], ...] = (),
        tracing: Tracing | None = None,
    ) -> None:
        """`observers`: log hooks after the plugins' (the access log, the metrics)."""
        """`cluster` is None for a route the gateway answers itself, or one that `split`s."""
        self.name = name
        # The largest request body: the route's request-size-limit, else server.limits'.
        self.max_body = chain.max_body if chain.max_body is not None else max_body
        self.cluster = cluster
        self.split = split
        self.mirror = mirror
        self.strip_prefix = strip_prefix
        self.preserve_host = preserve_host
        self.local = local
        # PERF: the plugin hooks bound per phase; an empty tuple skips the phase entirely.
        self.access = chain.access
        self.response = chain.response
        # A split with a sticky cookie may add Set-Cookie, as a plugin adds fields.
        self.fields = (
            chain.fields
            or (split is not None and split.cookie is not None)
            or (tracing is not None and tracing.response_header)
        )
        self.body = chain.body
        self.reframe = chain.reframe
        self.log = chain.log + observers
        # Requests set up the plugin state (identity, client address) when a plugin, a
        # cluster's balancer or a sticky split reads it.
        clusters = [cluster] if cluster is not None else split.clusters if split else []
        if mirror is not None:
            clusters.append(mirror.cluster)
        reads = any(c.reads_request for c in clusters) or (split is not None and split.key)
        reads = reads or tracing is not None  # its trace is set up with the plugin state
        self.hooked = bool(
            chain.access or chain.response or self.fields or chain.body or self.log or reads
        )


BASE_HEADER_KINDS = by_sent_name(REQUEST_KINDS)


class Runtime:
    __slots__ = (
        "consumers",
        "encoded_slash",
        "header_kinds",
        "limits",
        "max_body",
        "observer",
        "plugins",
        "router",
        "timeouts",
        "tracing",
        "trusted",
    )

    def __init__(
        self,
        router: Router,
        limits: Limits,
        timeouts: ServerTimeouts,
        header_kinds: dict[bytes, int | None] = BASE_HEADER_KINDS,
        trusted: Networks | None = None,
        plugins: list[Any] | None = None,
        consumers: ConsumerIndex | None = None,
        encoded_slash: str = "reject",
        observer: Observers | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.router = router
        self.tracing = tracing  # trace context propagation (observe/tracing.py); None: off
        self.observer = observer  # the access log and metrics (observers.py); None: neither
        self.encoded_slash = encoded_slash  # server.paths.encoded_slash
        self.consumers = consumers or ConsumerIndex(())
        self.limits = limits
        self.max_body = limits.max_body_bytes  # raised by compile_runtime to the largest route's
        self.timeouts = timeouts
        self.header_kinds = header_kinds  # how ClientProtocol sorts each request field
        self.trusted = trusted or Networks(())
        self.plugins = plugins or []

    def close(self) -> None:
        """A newer runtime replaced this one: its plugins stop their background work."""
        for plugin in self.plugins:
            plugin.close()


def compile_runtime(config: Config, hosts: Hosts, services: Services) -> Runtime:
    """Build the snapshot; hosts come from (and are kept in) the worker's registry."""
    watched: dict[bytes, int] = {}
    consumers = ConsumerIndex(config.consumers)
    build = Build(consumers, services, watched)
    build.behind_proxies = bool(config.server.trusted_proxies)
    build.redis = config.redis
    build.plans = config.plans
    clusters: dict[str, Cluster] = {}
    used = set()
    now = services.loop.time()
    budgets = set()
    metrics = services.metrics if config.server.admin is not None else None
    if metrics is not None:
        names = [consumer.name for consumer in config.consumers]
        metrics.configure(config.metrics.consumer_label, names)
    for name, upstream in config.upstreams.items():
        members = [hosts.host(name, target.url, upstream) for target in upstream.targets]
        used.update(members)
        for host in members:
            host.count_with(metrics.target(name, host.label) if metrics is not None else None)
        key = key_reader((upstream.hash_on,), build, None) if upstream.hash_on else None
        budget = None
        if upstream.retry_budget is not None:
            budget = services.budgets.budget(name, upstream.retry_budget)
            budgets.add(budget)
        clusters[name] = cluster = Cluster(name, members, upstream, key, now, budget)
        cluster.metrics = metrics.upstream(name) if metrics is not None else None
    hosts.retain(used)
    services.budgets.retain(budgets)
    services.follow_health(list(clusters.values()))
    chains = ChainBuilder(config.plugins, build)
    access = access_log(config.server.access_log, build, services)
    tracing = tracing_of(config.tracing, build, services)
    compiled = []
    routes_measured = []
    for i, route in enumerate(config.routes):
        name = route.name or f"routes[{i}]"
        chain = chains.chain_for(route.plugins)
        measured = None
        if metrics is not None:
            measured = metrics.route(name, refusing_plugins(chain))
            routes_measured.append(measured)
        hook = route_observer(access, measured)
        observers = (hook,) if hook is not None else ()
        if tracing is not None and tracing.exporter is not None:
            observers += (tracing.finished,)
        compiled.append(
            CompiledRoute(
                name,
                clusters[route.upstream] if isinstance(route.upstream, str) else None,
                route.strip_prefix,
                route.preserve_host,
                chain=chain,
                max_body=config.server.limits.max_body_bytes,
                split=splitter(route.upstream, clusters, build),
                mirror=mirror(route.mirror, clusters),
                observers=observers,
                tracing=tracing,
            )
        )
    if metrics is not None:
        metrics.live(routes_measured, list(clusters.values()))
        services.stats.start()
    observer = Observers(access, metrics) if access is not None or metrics is not None else None
    services.retain()
    router, _ = build_router(config.routes, compiled)
    kinds = {**watched, **REQUEST_KINDS}
    if tracing is not None:
        kinds[b"traceparent"] = K_TRACEPARENT
    header_kinds = by_sent_name(kinds) if len(kinds) > len(REQUEST_KINDS) else BASE_HEADER_KINDS
    runtime = Runtime(
        router,
        config.server.limits,
        config.server.timeouts,
        header_kinds,
        Networks(config.server.trusted_proxies),
        chains.plugins(),
        consumers,
        config.server.paths.encoded_slash,
        observer,
        tracing,
    )
    runtime.max_body = max([runtime.max_body, *(route.max_body for route in compiled)])
    return runtime


def access_log(settings: AccessLogSettings | None, build: Build, services: Services) -> Any:
    """The access log of this load (its file's appender is kept across reloads)."""
    if settings is None:
        return None
    path = settings.path
    appender = services.keep(("access-log", path), lambda: Appender(services.loop, path))
    return AccessLog(settings, appender, build.watch("user-agent"), build.behind_proxies)


def tracing_of(settings: TracingSettings | None, build: Build, services: Services) -> Any:
    """This load's Tracing (its exporter is kept across reloads), or None."""
    if settings is None:
        return None
    exporter = None
    endpoint = settings.otlp_endpoint
    if endpoint is not None:
        service = settings.service_name
        exporter = services.keep(
            ("otlp", endpoint, service), lambda: OtlpExporter(services.loop, endpoint, service)
        )
    return Tracing(settings, exporter, build.watch("user-agent") if exporter else 0)


def refusing_plugins(chain: Chain) -> list[str]:
    """The route's plugins whose 401 and 403 count as auth failures (fastgw_auth_failures)."""
    names = []
    for hook in chain.access:
        plugin = getattr(hook, "__self__", None)
        if plugin is not None and plugin.phase in (Phase.AUTHENTICATION, Phase.AUTHORIZATION):
            names.append(plugin.name)
    return names


def splitter(upstream: str | Split, clusters: dict[str, Cluster], build: Build) -> Any:
    """A route's Splitter when it splits its traffic between upstreams."""
    if isinstance(upstream, str):
        return None
    sides = [(clusters[side.upstream], side.weight) for side in upstream.split]
    sticky = upstream.sticky
    if sticky is None:
        return Splitter(sides)
    key = key_reader((sticky,), build, None)
    cookie = sticky.partition(":")[2].encode() if sticky.startswith("cookie:") else None
    return Splitter(sides, key, cookie)


def mirror(settings: MirrorSettings | None, clusters: dict[str, Cluster]) -> Mirror | None:
    if settings is None:
        return None
    return Mirror(clusters[settings.upstream], settings.percent, settings.max_in_flight)


def local_runtime(
    paths: dict[str, LocalHandler], limits: Limits, timeouts: ServerTimeouts
) -> Runtime:
    """A runtime whose routes the gateway answers itself (the admin listener): keys are
    paths (GET) or `METHOD /path`."""
    router = Router()
    for i, (key, handler) in enumerate(paths.items()):
        method, _, path = key.rpartition(" ")
        methods = (method or "GET",)
        router.add(CompiledRoute(key, None, local=handler), i, path, methods, None, None)
    router.finish()
    return Runtime(router, limits, timeouts)
