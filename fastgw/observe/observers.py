"""What a config load observes of the exchanges it serves: the access log and the metrics.

Both run as the last log hooks of every route, which the exchange runs exactly once however
it ends; an exchange that never had a route (a 404, a 400) is reported by its client
connection to `Observers.finished`.
"""

from __future__ import annotations

from collections.abc import Callable
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


def route_observer(access: Any, measured: Any) -> Callable[[Any], None] | None:
    """The one log hook that reports a route's exchanges to the access log and the route's
    metrics (either may be None), with one clock read."""
    if access is None and measured is None:
        return None
    if measured is None:
        return access.logged
    if access is None:
        return measured.logged
    log_finished = access.finished
    count_finished = measured.finished

    def observed(ex: Any) -> None:
        now = ex.client.loop.time()
        log_finished(ex, now)
        count_finished(ex, now)

    return observed
