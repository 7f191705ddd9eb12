"""Worker-lifetime services for plugins: state that should outlive one config load.

A JWKS cache, for example, is keyed by its URL here, so a reload that keeps the same URL keeps
the fetched keys instead of fetching again; what no live config uses any more is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..concurrency import ConcurrencyTable
from ..config.traffic import RedisSettings
from ..counters import WorkerCounters
from ..heartbeat import Heartbeats
from ..observe.metrics import Metrics, MetricsTables
from ..observe.stats import Stats
from ..quotas import QuotaTable
from ..redis_store import RedisStore
from ..shared import SharedTable
from ..upstream.budget import FIELDS as BUDGET_FIELDS
from ..upstream.budget import Budgets
from ..upstream.probes import HealthTable, Prober, Verdicts

# Keys of a table made for one process (tests, benchmarks); a gateway's comes from its master.
PRIVATE_TABLE_SLOTS = 1 << 16


@dataclass
class SharedState:
    """What the master makes before it forks, shared by every worker: rate-limit buckets,
    quota counts, requests in flight, active health verdicts, retry budgets' counts and
    circuit breakers' counts."""

    limits: SharedTable
    quotas: QuotaTable
    concurrency: ConcurrencyTable
    health: HealthTable
    budgets: WorkerCounters
    breakers: WorkerCounters
    metrics: MetricsTables
    heartbeats: Heartbeats | None = None  # workers' signs of life, for systemd (notify.py)
    started: float = field(default_factory=time.time)  # the master's start (the uptime)


class Services:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        shared: SharedState | None = None,
        worker_index: int = 0,
    ) -> None:
        self.loop = loop
        self.kept: dict[Any, Any] = {}
        self.used: set[Any] = set()
        self.table = shared.limits if shared is not None else None
        self.quotas = shared.quotas if shared is not None else None
        self.concurrency = shared.concurrency if shared is not None else None
        self.health = shared.health if shared is not None else HealthTable()
        self.verdicts = Verdicts(loop, self.health)
        counts = shared.budgets if shared is not None else WorkerCounters(BUDGET_FIELDS, 1)
        self.budgets = Budgets(loop, counts, worker_index)
        tables = shared.metrics if shared is not None else MetricsTables.make(1, routes=4096)
        self.metrics = Metrics(tables, worker_index, loop)
        self.stats = Stats(self.metrics)  # GET /stats and the dashboard
        self.started = shared.started if shared is not None else time.time()
        self.worker_index = worker_index  # this worker's column in the concurrency table
        # The clock of limits shared between processes: CLOCK_MONOTONIC, one for the machine
        # (the loop's own time is coarse and per process). Tests may swap it.
        self.clock: Callable[[], float] = time.monotonic
        # The wall clock of calendar windows (quotas). Tests may swap it.
        self.wall_clock: Callable[[], float] = time.time

    def limit_table(self) -> SharedTable:
        """The gateway's shared table of rate-limit buckets (fastgw/shared.py)."""
        if self.table is None:
            self.table = SharedTable(PRIVATE_TABLE_SLOTS, shared_lock=False)
        return self.table

    def quota_table(self) -> QuotaTable:
        """The gateway's shared table of quota counts (fastgw/quotas.py)."""
        if self.quotas is None:
            self.quotas = QuotaTable(PRIVATE_TABLE_SLOTS)
        return self.quotas

    def concurrency_table(self) -> ConcurrencyTable:
        """The gateway's shared counts of requests in flight (fastgw/concurrency.py)."""
        if self.concurrency is None:
            self.concurrency = ConcurrencyTable(PRIVATE_TABLE_SLOTS, workers=1)
        return self.concurrency

    def follow_health(self, clusters: list[Any]) -> None:
        """A new config's clusters (upstream/cluster.py): every worker follows the active verdicts; worker 0 probes
        (a prober is kept while its target and settings stay the same)."""
        self.verdicts.follow(clusters)
        if self.worker_index != 0:
            return
        for cluster in clusters:
            active = cluster.upstream.health_check.active
            if active is None:
                continue
            for host in cluster.hosts:
                self.keep(
                    ("probe", host, active),
                    lambda host=host, active=active: Prober(host, active, self.health),
                )

    def redis_store(self, settings: RedisSettings) -> RedisStore:
        """The worker's client of the Redis `settings` name (kept while a config uses it)."""
        return self.keep(("redis", settings), lambda: RedisStore(settings, self.loop))

    def keep(self, key: Any, factory: Callable[[], Any]) -> Any:
        """The object kept under `key`, made by `factory` the first time."""
        self.used.add(key)
        found = self.kept.get(key)
        if found is None:
            found = self.kept[key] = factory()
        return found

    def appenders(self) -> list[Any]:
        """The access log files kept now (for the metrics of dropped lines)."""
        return [kept for kept in self.kept.values() if hasattr(kept, "reopen")]

    def exporters(self) -> list[Any]:
        """The span exporters kept now (for the metrics of exported and dropped spans)."""
        return [kept for kept in self.kept.values() if hasattr(kept, "exported")]

    def reopen(self) -> None:
        """SIGUSR1: what writes to files (access logs) opens them again."""
        for appender in self.appenders():
            appender.reopen()

    def close(self) -> None:
        """The worker stops: close everything kept, and let files be written to the end."""
        for kept in self.kept.values():
            kept.close()
        for kept in self.kept.values():
            if hasattr(kept, "wait_closed"):
                kept.wait_closed(2.0)
        self.kept = {}

    def retain(self) -> None:
        """After a load: close what the new config did not ask for (objects with `close`)."""
        for key in list(self.kept):
            if key not in self.used:
                self.kept.pop(key).close()
        self.used = set()
