"""What a config load observes of the exchanges it serves: the access log and the metrics.

Both run as the last log hooks of every route, which the exchange runs exactly once however
it ends; an exchange that never had a route (a 404, a 400) is reported by its client
connection to `Observers.finished`.
"""

from __future__ import annotations

from typing import Any


class Observers:
    __slots__ = ("access", "metrics")

    def __init__(self, access: Any, metrics: Any) -> None:
        """`access`: the AccessLog or None; `metrics`: the worker's Metrics or None."""
        self.access = access
        self.metrics = metrics

    def finished(self, ex: Any, now: float) -> None:
        if self.access is not None:
            self.access.finished(ex, now)
        if self.metrics is not None:
            self.metrics.unrouted.finished(ex, now)
