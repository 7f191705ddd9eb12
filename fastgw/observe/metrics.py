"""Prometheus metrics, counted per worker in shared memory and summed on a scrape.

The master makes the tables before it forks (fastgw/counters.py: a slot per route, target,
upstream, (route, plugin) and one for the gateway, one column per worker plus one for the
master). A worker adds to its own cells as requests end (one aligned 64-bit store each, no
lock); a scrape, answered by whichever worker the admin connection reached, reads the sums
and formats them with prometheus-client. Counters never go back while the gateway runs: a
replaced worker's cells keep their counts and its successor adds to them; only gauges
(connections, health) are zeroed for a dead worker. Label values come from the config (route,
upstream and target names, a fixed set of methods, status classes and outcomes), never from
requests. Durations are summed in microseconds.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ..counters import WorkerCounters, tag
from ..upstream.outcomes import (
    CLIENT_ABORT,
    CONNECT_ERROR,
    GATEWAY_ERROR,
    INVALID,
    OK,
    RESET,
    TIMEOUT,
)

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
STATUSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "429", "499")
# Prometheus' default buckets, with three below 5 ms (a gateway's own answers, a fast upstream).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The buckets and +Inf, then the sum (µs); the count is the buckets' sum (no cell of its own).
HISTOGRAM = len(BUCKETS) + 2
SUM_FIELD = len(BUCKETS) + 1
OUTCOMES = ("ok", CONNECT_ERROR, TIMEOUT, RESET, "5xx", INVALID, CLIENT_ABORT, GATEWAY_ERROR)

# Fields of a route's slot.
R_REQUESTS = 0
R_DURATION = len(METHODS) * len(STATUSES)
R_BYTES_IN = R_DURATION + HISTOGRAM
R_BYTES_OUT = R_BYTES_IN + 1
R_LIMITED = R_BYTES_OUT + 1
ROUTE_FIELDS = R_LIMITED + 1
# Of a target's slot.
T_OUTCOMES = 0
T_DURATION = len(OUTCOMES)
T_HEALTHY = T_DURATION + HISTOGRAM  # a gauge: 1 while in this worker's rotation
# Gauges of the target's state in each worker, published every second (GET /upstreams).
T_IN_FLIGHT, T_CONNECTIONS, T_IDLE, T_PASSIVE, T_EWMA_US = range(T_HEALTHY + 1, T_HEALTHY + 6)
TARGET_FIELDS = T_EWMA_US + 1
TARGET_GAUGES = (T_HEALTHY, T_IN_FLIGHT, T_CONNECTIONS, T_IDLE, T_PASSIVE, T_EWMA_US)
PASSIVE_STATES = ("healthy", "ejected", "probation", "trial")
# Of the gateway's slot: gauges first (zeroed for a dead worker), then counters.
G_CONNECTIONS, G_PID, G_DROPPED, G_RELOADS_OK, G_RELOADS_FAILED = range(5)
G_SPANS_EXPORTED, G_SPANS_DROPPED = 5, 6
GATEWAY_FIELDS = 7
GATEWAY_GAUGES = (G_CONNECTIONS, G_PID)

METHOD_FIELD = {m.encode(): i * len(STATUSES) for i, m in enumerate(METHODS[:-1])}
OTHER_METHOD = (len(METHODS) - 1) * len(STATUSES)
STATUS_FIELD = {s: (s // 100 - 1 if 100 <= s < 600 else 4) for s in range(0, 1000)}
STATUS_FIELD[429] = 5
STATUS_FIELD[499] = 6
OUTCOME_FIELD = {name: i for i, name in enumerate(OUTCOMES)}
FIVE_XX = OUTCOME_FIELD["5xx"]
US = 1_000_000


@dataclass
class MetricsTables:
    """The gateway's metric tables, made by the master before it forks."""

    routes: WorkerCounters
    consumers: WorkerCounters  # requests by route and consumer (metrics.consumer_label)
    targets: WorkerCounters
    upstreams: WorkerCounters
    auth: WorkerCounters
    gateway: WorkerCounters
    workers: int

    @classmethod
    def make(cls, workers: int, routes: int = 16384) -> MetricsTables:
        columns = workers + 1  # the master's column is the last
        return cls(
            WorkerCounters(ROUTE_FIELDS, columns, slots=routes),
            WorkerCounters(R_DURATION, columns, slots=routes),
            WorkerCounters(TARGET_FIELDS, columns),
            WorkerCounters(1, columns),
            WorkerCounters(1, columns),
            WorkerCounters(GATEWAY_FIELDS, columns, slots=16),
            workers,
        )

    def forget_worker(self, worker: int) -> None:
        self.targets.forget_worker(worker, TARGET_GAUGES)
        self.gateway.forget_worker(worker, GATEWAY_GAUGES)

    def reloaded(self, ok: bool) -> None:
        """The master counts reloads in its own column."""
        table = self.gateway
        cell = table.cell(
            table.slot(tag("gateway")), G_RELOADS_OK if ok else G_RELOADS_FAILED, self.workers
        )
        table.view[cell] += 1


class Cells:
    """One slot's cells of this worker: `field(n)` is the index of its counter of field n."""

    __slots__ = ("base", "slot", "table", "view", "width")

    def __init__(self, table: WorkerCounters, name: int, worker: int) -> None:
        self.table = table
        self.view = table.view
        self.slot = table.slot(name)
        if self.slot < 0:  # the table is full: this name counts in a private slot
            private = WorkerCounters(table.fields, table.workers, slots=1)
            self.table, self.view, self.slot = private, private.view, 1
        self.width = self.table.workers
        self.base = self.slot + worker

    def field(self, number: int) -> int:
        return self.base + number * self.width

    def total(self, number: int) -> int:
        return self.table.total(self.slot, number)

    def totals(self, first: int, count: int) -> list[int]:
        return [self.table.total(self.slot, first + i) for i in range(count)]


class RouteMetrics:
    """A route's counters in this worker; `logged` is the route's last log hook."""

    __slots__ = (
        "auth",
        "by_consumer",
        "cells",
        "duration",
        "name",
        "tables",
        "view",
        "width",
        "worker",
    )

    def __init__(
        self,
        tables: MetricsTables,
        name: str,
        worker: int,
        auth: dict[str, Cells],
        by_consumer: bool = False,
    ) -> None:
        self.name = name
        self.tables = tables
        self.worker = worker
        # With metrics.consumer_label: requests also by consumer ("" without one).
        self.by_consumer: dict[str, Cells] | None = {} if by_consumer else None
        self.cells = Cells(tables.routes, tag("route", name), worker)
        self.view = self.cells.view
        self.width = self.cells.width
        self.duration = self.cells.field(R_DURATION)
        self.auth = auth  # plugin name -> cells, for the route's authentication plugins

    def logged(self, ex: Any) -> None:
        self.finished(ex, ex.client.loop.time())

    def finished(self, ex: Any, now: float) -> None:
        view = self.view
        base = self.cells.base
        width = self.width
        status = ex.status or 499
        field = METHOD_FIELD.get(ex.method, OTHER_METHOD) + STATUS_FIELD[status]
        view[base + field * width] += 1
        view[base + R_BYTES_OUT * width] += ex.bytes_out
        if self.by_consumer is not None:
            self.count_consumer(ex, field)
        if ex.route is None:
            return  # not routed: counted under route "none" only
        # PERF: the histogram inline, no call per request: its bucket and the sum (µs).
        seconds = now - ex.received_at
        first = self.duration
        view[first + bisect_left(BUCKETS, seconds) * width] += 1
        view[first + SUM_FIELD * width] += int(seconds * US)
        if ex.body_bytes:  # PERF: most requests have no body; a test is cheaper than an add
            view[base + R_BYTES_IN * width] += ex.body_bytes
        if status == 429 and ex.upstream_host is None:
            view[base + R_LIMITED * width] += 1
        refused_by = ex.refused_by  # set on every routed exchange while observing
        if refused_by is not None and refused_by in self.auth:
            cells = self.auth[refused_by]
            cells.view[cells.base] += 1

    def count_consumer(self, ex: Any, field: int) -> None:
        consumer = getattr(ex, "consumer", None) if ex.route is not None else None
        name = consumer.name if consumer is not None else ""
        cells = self.by_consumer.get(name)
        if cells is None:
            cells = self.by_consumer[name] = Cells(
                self.tables.consumers, tag("consumer", self.name, name), self.worker
            )
        cells.view[cells.base + field * cells.width] += 1


class TargetMetrics:
    """A target's counters in this worker (fed by Host.attempt_ended)."""

    __slots__ = ("cells", "duration", "healthy", "view", "width")

    def __init__(self, tables: MetricsTables, upstream: str, label: str, worker: int) -> None:
        self.cells = Cells(tables.targets, tag("target", upstream, label), worker)
        self.view = self.cells.view
        self.width = self.cells.width
        self.duration = self.cells.field(T_DURATION)
        self.healthy = self.cells.field(T_HEALTHY)

    def attempt(self, outcome: str, status: int, seconds: float) -> None:
        view = self.view
        width = self.width
        if outcome == OK:
            view[self.cells.base + (FIVE_XX if status >= 500 else 0) * width] += 1
        else:
            view[self.cells.base + OUTCOME_FIELD.get(outcome, 0) * width] += 1
        # PERF: the histogram inline, as RouteMetrics.finished does it.
        first = self.duration
        view[first + bisect_left(BUCKETS, seconds) * width] += 1
        view[first + SUM_FIELD * width] += int(seconds * US)

    def set_healthy(self, healthy: bool) -> None:
        self.view[self.healthy] = int(healthy)

    def publish(self, host: Any) -> None:
        """This worker's view of the target, for GET /upstreams (once a second)."""
        view = self.view
        cells = self.cells
        view[cells.field(T_IN_FLIGHT)] = host.in_flight
        view[cells.field(T_CONNECTIONS)] = host.connections
        view[cells.field(T_IDLE)] = len(host.idle)
        health = host.health
        view[cells.field(T_PASSIVE)] = PASSIVE_STATES.index(health.state) if health else 0
        view[cells.field(T_EWMA_US)] = int(host.ewma * US) if host.ewma >= 0 else -1


class Metrics:
    """This worker's side of the metrics: the cells of the live config and the scrape."""

    def __init__(self, tables: MetricsTables, worker: int, loop: Any) -> None:
        self.tables = tables
        self.worker = worker
        self.loop = loop
        self.gateway = Cells(tables.gateway, tag("gateway"), worker)
        # What the kept appenders and exporters had counted at the last tick, by field.
        self.seen: dict[int, dict[Any, int]] = {}
        self.routes: list[RouteMetrics] = []
        self.clusters: list[Any] = []
        self.consumer_label = False
        self.consumer_names: list[str] = []
        self.unrouted = self.route("none", {})
        self.version = (0, "")
        self.connections: Any = None  # the worker's set of client connections
        self.appenders: Any = lambda: []  # the access log appenders of the live config
        self.exporters: Any = lambda: []  # the span exporters of the live config
        self.timer: Any = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def route(self, name: str, auth_plugins: dict[str, Any]) -> RouteMetrics:
        auth = {
            plugin: Cells(self.tables.auth, tag("auth", name, plugin), self.worker)
            for plugin in auth_plugins
        }
        return RouteMetrics(self.tables, name, self.worker, auth, self.consumer_label)

    def target(self, upstream: str, label: str) -> TargetMetrics:
        return TargetMetrics(self.tables, upstream, label, self.worker)

    def upstream(self, name: str) -> Cells:
        return Cells(self.tables.upstreams, tag("upstream", name), self.worker)

    def configure(self, consumer_label: bool, consumers: list[str]) -> None:
        """At each load, before its routes: whether requests are counted by consumer."""
        if consumer_label != self.consumer_label:
            self.consumer_label = consumer_label
            self.unrouted = self.route("none", {})
        self.consumer_names = consumers

    def live(self, routes: list[RouteMetrics], clusters: list[Any]) -> None:
        """A config load's routes and clusters are the ones a scrape reports."""
        self.routes = routes
        self.clusters = clusters
        if self.timer is None:
            self.tick()

    def tick(self) -> None:
        """Once a second: this worker's gauges and the access log's dropped lines."""
        view = self.gateway.view
        view[self.gateway.field(G_PID)] = os.getpid()
        if self.connections is not None:
            view[self.gateway.field(G_CONNECTIONS)] = len(self.connections)
        for cluster in self.clusters:
            for host in cluster.hosts:
                host.metrics.publish(host)
        appenders = self.appenders()
        self.tally(G_DROPPED, appenders, [appender.dropped for appender in appenders])
        exporters = self.exporters()
        self.tally(G_SPANS_EXPORTED, exporters, [exporter.exported for exporter in exporters])
        self.tally(G_SPANS_DROPPED, exporters, [exporter.dropped for exporter in exporters])
        self.timer = self.loop.call_later(1.0, self.tick)

    def tally(self, field: int, counting: list[Any], counts: list[int]) -> None:
        """Add to a gateway counter what objects counted since the last tick (an object
        a reload closed stops adding; what it counted stays in the cell)."""
        seen = self.seen.get(field, {})
        added = sum(n - seen.get(thing, 0) for thing, n in zip(counting, counts, strict=True))
        self.seen[field] = dict(zip(counting, counts, strict=True))
        if added:
            self.gateway.view[self.gateway.field(field)] += added

    def scrape(self) -> tuple[bytes, bytes]:
        """The body and content type of `GET /metrics`."""
        self.tick_now()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()

    def tick_now(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.tick()

    # -- the collector -------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        families = self.route_families() + self.upstream_families() + self.gateway_families()
        return families + self.process_families()

    def route_families(self) -> list[Metric]:
        labels = ["route", "method", "status"] + (["consumer"] if self.consumer_label else [])
        requests = CounterMetricFamily("fastgw_requests", "Requests answered", labels=labels)
        duration = HistogramMetricFamily(
            "fastgw_request_duration_seconds",
            "From the request's turn to the end of its response",
            labels=["route"],
        )
        received = CounterMetricFamily(
            "fastgw_bytes_received", "Request body bytes", labels=["route"]
        )
        sent = CounterMetricFamily("fastgw_bytes_sent", "Response body bytes", labels=["route"])
        limited = CounterMetricFamily(
            "fastgw_ratelimit_rejected", "Requests refused with 429 by a limit", labels=["route"]
        )
        auth = CounterMetricFamily(
            "fastgw_auth_failures",
            "Requests refused (401, 403) by an authentication or authorization plugin",
            labels=["route", "plugin"],
        )
        for route in [*self.routes, self.unrouted]:
            cells = route.cells
            if self.consumer_label:
                for consumer in [*self.consumer_names, ""]:
                    table = self.tables.consumers
                    slot = table.find(tag("consumer", route.name, consumer))
                    if slot >= 0:
                        counts = [table.total(slot, f) for f in range(R_DURATION)]
                        request_samples(requests, [route.name], counts, [consumer])
            else:
                request_samples(requests, [route.name], cells.totals(R_REQUESTS, R_DURATION))
            if route is self.unrouted:
                continue
            histogram(duration, [route.name], cells.totals(R_DURATION, HISTOGRAM))
            received.add_metric([route.name], cells.total(R_BYTES_IN))
            sent.add_metric([route.name], cells.total(R_BYTES_OUT))
            limited.add_metric([route.name], cells.total(R_LIMITED))
            for plugin, plugin_cells in route.auth.items():
                auth.add_metric([route.name, plugin], plugin_cells.total(0))
        return [requests, duration, received, sent, limited, auth]

    def upstream_families(self) -> list[Metric]:
        attempts = CounterMetricFamily(
            "fastgw_upstream_requests",
            "Attempts on upstream targets, by how they ended",
            labels=["upstream", "target", "outcome"],
        )
        duration = HistogramMetricFamily(
            "fastgw_upstream_duration_seconds",
            "Attempts on upstream targets, from their start to their end",
            labels=["upstream", "target"],
        )
        healthy = GaugeMetricFamily(
            "fastgw_upstream_target_healthy",
            "1 while the target is in every worker's rotation",
            labels=["upstream", "target"],
        )
        retries = CounterMetricFamily(
            "fastgw_upstream_retries", "Requests sent again to an upstream", labels=["upstream"]
        )
        alive = self.live_workers()
        for cluster in self.clusters:
            retries.add_metric([cluster.name], cluster.metrics.total(0))
            for host in cluster.hosts:
                cells = host.metrics.cells
                labels = [cluster.name, host.label]
                counts = cells.totals(T_OUTCOMES, len(OUTCOMES))
                for outcome, value in zip(OUTCOMES, counts, strict=True):
                    attempts.add_metric([*labels, outcome], value)
                histogram(duration, labels, cells.totals(T_DURATION, HISTOGRAM))
                healthy.add_metric(labels, 1.0 if self.healthy(host, alive) else 0.0)
        return [attempts, duration, healthy, retries]

    def gateway_families(self) -> list[Metric]:
        cells = self.gateway
        connections = GaugeMetricFamily(
            "fastgw_connections_active", "Open client connections", cells.total(G_CONNECTIONS)
        )
        reloads = CounterMetricFamily(
            "fastgw_config_reloads", "Config reloads (SIGHUP)", labels=["result"]
        )
        reloads.add_metric(["success"], cells.total(G_RELOADS_OK))
        reloads.add_metric(["failure"], cells.total(G_RELOADS_FAILED))
        info = GaugeMetricFamily(
            "fastgw_config_info", "The live config", labels=["version", "digest"]
        )
        info.add_metric([str(self.version[0]), self.version[1]], 1.0)
        dropped = CounterMetricFamily(
            "fastgw_access_log_dropped", "Access log lines lost", cells.total(G_DROPPED)
        )
        exported = CounterMetricFamily(
            "fastgw_tracing_spans_exported",
            "Spans the OTLP collector accepted",
            cells.total(G_SPANS_EXPORTED),
        )
        spans_dropped = CounterMetricFamily(
            "fastgw_tracing_spans_dropped",
            "Spans lost: the export queue was full or the collector did not take them",
            cells.total(G_SPANS_DROPPED),
        )
        return [connections, reloads, info, dropped, exported, spans_dropped]

    def upstream_report(self) -> list[dict[str, Any]]:
        """GET /upstreams: every upstream and target, merged over the live workers (each
        worker's part is at most a second old; the answering worker's is current)."""
        self.tick_now()
        alive = self.live_workers()
        report = []
        for cluster in self.clusters:
            targets = []
            for host, target in zip(cluster.hosts, cluster.upstream.targets, strict=True):
                cells = host.metrics.cells

                def each(field: int, cells: Any = cells) -> list[int]:
                    first = cells.slot + field * cells.width
                    return [cells.view[first + w] for w in alive]

                ewma = [us / 1000 for us in each(T_EWMA_US) if us >= 0]
                passive = [PASSIVE_STATES[code] for code in each(T_PASSIVE)]
                targets.append(
                    {
                        "target": host.label,
                        "weight": target.weight,
                        "healthy": self.healthy(host, alive),
                        "active_check": "up" if host.active_ok else "down",
                        "passive": passive,  # per worker: healthy, ejected, probation, trial
                        "ejected_in_workers": sum(state != "healthy" for state in passive),
                        "in_flight": sum(each(T_IN_FLIGHT)),
                        "connections": sum(each(T_CONNECTIONS)),
                        "idle": sum(each(T_IDLE)),
                        "ewma_ms": round(sum(ewma) / len(ewma), 3) if ewma else None,
                    }
                )
            report.append(
                {
                    "upstream": cluster.name,
                    "balancer": cluster.upstream.balancer,
                    "retries": cluster.upstream.retries,
                    "targets": targets,
                }
            )
        return report

    def healthy(self, host: Any, alive: list[int] | None = None) -> bool:
        """Whether the target is in every live worker's rotation."""
        cells = host.metrics.cells
        view = cells.view
        first = cells.slot + T_HEALTHY * cells.width
        return all(view[first + w] for w in (alive if alive is not None else self.live_workers()))

    def live_workers(self) -> list[int]:
        cells = self.gateway
        return [
            w
            for w in range(self.tables.workers)
            if cells.view[cells.slot + G_PID * cells.width + w]
        ]

    def process_families(self) -> list[Metric]:
        """prometheus-client's process metrics of every worker, labelled `worker`."""
        cells = self.gateway
        merged: dict[str, Metric] = {}
        for w in self.live_workers():
            pid = cells.view[cells.slot + G_PID * cells.width + w]
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            for family in collector.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "worker": str(w)}, sample.value)
        return list(merged.values())


def request_samples(
    family: CounterMetricFamily, first: list[str], counts: list[int], last: list[str] = ()
) -> None:
    """The non-zero request counts, labelled by method and status between `first` and
    `last`."""
    for m, method in enumerate(METHODS):
        for s, status in enumerate(STATUSES):
            value = counts[m * len(STATUSES) + s]
            if value:
                family.add_metric([*first, method, status, *last], value)


def histogram(family: HistogramMetricFamily, labels: list[str], fields: list[int]) -> None:
    """Cumulative buckets from the per-bucket counts of a histogram's fields."""
    buckets, running = [], 0
    for bound, count in zip((*BUCKETS, float("inf")), fields, strict=False):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    family.add_metric(labels, buckets, fields[SUM_FIELD] / US)
