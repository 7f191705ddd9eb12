"""Upstream endpoints: one per address, holding its idle keep-alive connections.

Endpoints live in a per-worker registry keyed by address, so pools survive config reloads;
an endpoint no reloaded config references closes its idle connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from .protocol import UpstreamProtocol

if TYPE_CHECKING:
    from ..config.schema import Pool

log = logging.getLogger("fastgw.upstream")


class Endpoint:
    """One upstream address: a LIFO of idle connections (the warmest first) and a dialer."""

    __slots__ = (
        "host",
        "host_header",
        "idle",
        "idle_timeout",
        "label",
        "loop",
        "max_idle",
        "port",
        "retired",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.label = f"{host}:{port}"
        self.host_header = self.label.encode() if ":" not in host else f"[{host}]:{port}".encode()
        self.idle: list[UpstreamProtocol] = []
        self.max_idle = 64
        self.idle_timeout = 60.0
        self.retired = False  # no live config names it: connections close when released

    def configure(self, pool: Pool) -> None:
        self.max_idle = pool.max_idle
        self.idle_timeout = pool.idle_timeout
        while len(self.idle) > self.max_idle:
            self.idle.pop(0).transport.close()

    def acquire(self) -> UpstreamProtocol | None:
        """An idle connection that is still open, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.transport.is_closing():
                return conn
        return None

    def release(self, conn: UpstreamProtocol, now: float) -> None:
        """Keep a connection whose last exchange ended cleanly, if there is room."""
        if len(self.idle) < self.max_idle and not self.retired and not conn.transport.is_closing():
            conn.park(now, self.idle_timeout)
            self.idle.append(conn)
        else:
            conn.transport.close()

    def forget(self, conn: UpstreamProtocol) -> None:
        """An idle connection closed or expired: take it out of the pool."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().transport.close()

    def dial(self, exchange: Any, timeout: float) -> None:
        """Open a new connection; report to `exchange.connected` or `exchange.connect_failed`."""
        loop = self.loop
        task = loop.create_task(
            loop.create_connection(lambda: UpstreamProtocol(self), self.host, self.port)
        )
        timer = loop.call_later(timeout, task.cancel)

        def done(task: asyncio.Task) -> None:
            timer.cancel()
            if task.cancelled():
                exchange.connect_failed(self, "timeout")
                return
            exc = task.exception()
            if exc is not None:
                log.debug("connect to %s failed: %s", self.label, exc)
                exchange.connect_failed(self, "refused")
                return
            exchange.connected(task.result()[1])

        task.add_done_callback(done)


class Registry:
    """Endpoints by (host, port) for one worker; reloads reuse them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.endpoints: dict[tuple[str, int], Endpoint] = {}

    def get(self, host: str, port: int) -> Endpoint:
        endpoint = self.endpoints.get((host, port))
        if endpoint is None:
            endpoint = self.endpoints[(host, port)] = Endpoint(self.loop, host, port)
        return endpoint

    def retain(self, used: set[tuple[str, int]]) -> None:
        """Close idle connections of endpoints the live config no longer names."""
        for key in list(self.endpoints):
            if key not in used:
                endpoint = self.endpoints.pop(key)
                endpoint.retired = True
                endpoint.close_idle()

    def close_all(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.close_idle()
