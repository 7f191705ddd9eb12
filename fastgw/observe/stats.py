"""Live analytics for `GET /stats` and the dashboard: the last 1 and 5 minutes per route and
per upstream target, from the same shared counters as the metrics.

Every `EVERY` seconds the worker takes a snapshot of the totals summed over all workers (per
route: requests, 5xx, the latency histogram; per target: attempts, failed attempts, the
histogram) and keeps five minutes of them; a window is the difference between now and the
oldest snapshot inside it, so whichever worker answers, it reports the whole gateway. A
worker started less than five minutes ago reports over the time it has seen (`seconds`).
Percentiles are interpolated inside the histogram's buckets, as Prometheus'
`histogram_quantile` does. Reading the totals costs the worker a few hundred additions every
five seconds and nothing per request.
"""

from __future__ import annotations

import time
from collections import deque
from itertools import pairwise
from typing import Any

from .metrics import (
    BUCKETS,
    CONNECT_ERROR,
    INVALID,
    METHODS,
    OUTCOMES,
    R_DURATION,
    R_REQUESTS,
    RESET,
    STATUSES,
    T_DURATION,
    T_OUTCOMES,
    TIMEOUT,
)

EVERY = 5.0  # seconds between snapshots
WINDOWS = (("1m", 60.0), ("5m", 300.0))
KEPT = int(300 / EVERY) + 2
SERVER_ERRORS = [m * len(STATUSES) + STATUSES.index("5xx") for m in range(len(METHODS))]
FAILED = [OUTCOMES.index(o) for o in (CONNECT_ERROR, TIMEOUT, RESET, "5xx", INVALID)]
BOUNDS = len(BUCKETS) + 1  # the buckets and +Inf

# A series: counts (requests, errors, then one per bucket) by route name or (upstream, target).
Counts = tuple[int, ...]


class Snapshot:
    __slots__ = ("at", "routes", "targets", "wall")

    def __init__(self, at: float, wall: float, routes: dict, targets: dict) -> None:
        self.at = at  # the loop's clock
        self.wall = wall
        self.routes: dict[str, Counts] = routes
        self.targets: dict[tuple[str, str], Counts] = targets


class Stats:
    """One worker's view of the gateway's last five minutes."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics
        self.history: deque[Snapshot] = deque(maxlen=KEPT)
        self.timer: Any = None

    def start(self) -> None:
        """Once the first config's routes are live (again after a reload: nothing happens)."""
        if self.timer is None:
            self.tick()

    def tick(self) -> None:
        loop = self.metrics.loop
        self.history.append(self.snapshot(loop.time()))
        self.timer = loop.call_later(EVERY, self.tick)

    def snapshot(self, now: float) -> Snapshot:
        routes = {}
        for route in self.metrics.routes:
            statuses = route.cells.totals(R_REQUESTS, R_DURATION)
            latency = route.cells.totals(R_DURATION, BOUNDS)
            routes[route.name] = (sum(latency), sum(statuses[i] for i in SERVER_ERRORS), *latency)
        targets = {}
        for cluster in self.metrics.clusters:
            for host in cluster.hosts:
                cells = host.metrics.cells
                outcomes = cells.totals(T_OUTCOMES, len(OUTCOMES))
                latency = cells.totals(T_DURATION, BOUNDS)
                failed = sum(outcomes[i] for i in FAILED)
                targets[(cluster.name, host.label)] = (sum(latency), failed, *latency)
        return Snapshot(now, time.time(), routes, targets)

    def report(self, version: tuple[int, str], uptime: float) -> dict[str, Any]:
        """The body of `GET /stats`."""
        now = self.snapshot(self.metrics.loop.time())
        windows = {label: self.since(now.at - seconds) for label, seconds in WINDOWS}
        routes = {}
        for name, counts in now.routes.items():
            routes[name] = {
                label: window(counts, then.routes.get(name), now.at - then.at)
                for label, then in windows.items()
            }
            routes[name]["series"] = self.series(now, lambda s, name=name: s.routes.get(name))
        targets = []
        for cluster in self.metrics.clusters:
            for host in cluster.hosts:
                key = (cluster.name, host.label)
                entry: dict[str, Any] = {
                    "upstream": cluster.name,
                    "target": host.label,
                    "healthy": self.metrics.healthy(host),
                }
                for label, then in windows.items():
                    entry[label] = window(now.targets[key], then.targets.get(key), now.at - then.at)
                targets.append(entry)
        return {
            "time": round(now.wall, 3),
            "config_version": version[0],
            "config_digest": version[1],
            "uptime_seconds": round(uptime, 1),
            "workers": len(self.metrics.live_workers()),
            "routes": routes,
            "targets": targets,
        }

    def since(self, start: float) -> Snapshot:
        """The oldest snapshot taken at or after `start` (the oldest kept if none is older)."""
        for snapshot in self.history:
            if snapshot.at >= start - 0.5:
                return snapshot
        return self.history[-1]

    def series(self, now: Snapshot, counts_of: Any) -> dict[str, list]:
        """Requests/s, p99 and error rate between consecutive snapshots (for the charts)."""
        points: dict[str, list] = {"time": [], "rps": [], "p99_ms": [], "error_rate": []}
        kept = [*self.history, now]
        for before, after in pairwise(kept):
            old, new = counts_of(before), counts_of(after)
            if new is None or after.at - before.at < 1.0:
                continue
            figures = window(new, old, after.at - before.at)
            points["time"].append(round(after.wall, 3))
            points["rps"].append(figures["rps"])
            points["p99_ms"].append(figures["p99_ms"])
            points["error_rate"].append(figures["error_rate"])
        return points


def window(now: Counts, then: Counts | None, seconds: float) -> dict[str, Any]:
    """Rates and percentiles of what was counted between two snapshots."""
    diff = list(now) if then is None else [a - b for a, b in zip(now, then, strict=True)]
    requests, errors, latency = diff[0], diff[1], diff[2:]
    seconds = max(seconds, 1e-9)
    return {
        "seconds": round(seconds, 1),
        "requests": requests,
        "rps": round(requests / seconds, 3),
        "error_rate": round(errors / requests, 4) if requests else None,
        "p50_ms": quantile(0.50, latency, requests),
        "p95_ms": quantile(0.95, latency, requests),
        "p99_ms": quantile(0.99, latency, requests),
    }


def quantile(q: float, buckets: list[int], count: int) -> float | None:
    """The q-quantile in milliseconds, linear inside its bucket; None without samples."""
    if count <= 0:
        return None
    rank = q * count
    below = 0
    lower = 0.0
    for bound, n in zip(BUCKETS, buckets, strict=False):
        if n and below + n >= rank:
            return round((lower + (bound - lower) * (rank - below) / n) * 1000, 3)
        below += n
        lower = bound
    return round(BUCKETS[-1] * 1000, 3)  # in the +Inf bucket: the largest bound, as Prometheus
