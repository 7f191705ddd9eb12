"""Circuit breakers (Envoy's): limits per target on requests in flight, connections and
requests waiting for a connection, counted over all the workers of one gateway.

Each worker publishes its own counts of a target in a shared table (fastgw/counters.py)
whenever they change; a check reads the sums. Two workers checking at the same instant may
both pass, so a limit can be exceeded by at most one request per other worker. A target at a
limit is passed over: the request goes to another target, or gets 503 at once; nothing
queues. A dead worker's counts are zeroed by the master before its replacement starts.
"""

from __future__ import annotations

from typing import Any

from ..counters import WorkerCounters, tag

REQUESTS, CONNECTIONS, PENDING = range(3)
FIELDS = 3


class Breaker:
    """One target's limits and its cells in the table."""

    __slots__ = ("cells", "max_connections", "max_pending", "max_requests", "slot", "table")

    def __init__(
        self, name: tuple[str, str], settings: Any, table: WorkerCounters, worker: int
    ) -> None:
        self.max_connections = settings.max_connections
        self.max_pending = settings.max_pending
        self.max_requests = settings.max_requests
        slot = table.slot(tag("breaker", *name))
        if slot < 0:  # the shared table is full: this worker counts alone
            table, slot, worker = WorkerCounters(FIELDS, 1, slots=1), 1, 0
        self.table = table
        self.slot = slot
        self.cells = tuple(table.cell(slot, field, worker) for field in range(FIELDS))

    def publish(self, host: Any, starting: int = 0) -> None:
        """This worker's counts of the target (`starting`: an attempt about to begin)."""
        view = self.table.view
        requests, connections, pending = self.cells
        view[requests] = host.in_flight + starting
        view[connections] = host.connections + host.dialing
        view[pending] = host.dialing

    def admits(self, host: Any) -> bool:
        """Whether one more request may go to the target now."""
        table = self.table
        if table.total(self.slot, REQUESTS) >= self.max_requests:
            return False
        if host.idle:
            return True  # a pooled connection serves it: no new connection, no wait
        return (
            table.total(self.slot, CONNECTIONS) < self.max_connections
            and table.total(self.slot, PENDING) < self.max_pending
        )


class Breaking:
    """A cluster's balancer when its targets have circuit breakers: a target at a limit is
    passed over. The pick is the start of an attempt (Exchange.dispatch follows at once), so
    the attempt is published here; Host.attempt_ended publishes its end."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def pick(self, ex: Any = None, exclude: Any = None) -> Any:
        host = self.inner.pick(ex, exclude)
        if host is not None and not host.breaker.admits(host):
            passed = [host, *(exclude or ())]
            while host is not None and not host.breaker.admits(host):
                host = self.inner.pick(ex, passed)
                passed.append(host)
        if host is not None:
            host.breaker.publish(host, 1)
        return host
