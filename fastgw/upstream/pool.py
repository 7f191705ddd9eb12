"""Upstream endpoints: one per address, holding its idle keep-alive connections.

Endpoints live in a per-worker registry keyed by address, so pools survive config reloads;
an endpoint no reloaded config references closes its idle connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

from ..tls import client_context
from .protocol import UpstreamProtocol

if TYPE_CHECKING:
    from ..config.schema import Pool

log = logging.getLogger("fastgw.upstream")


class Endpoint:
    """One upstream address: a LIFO of idle connections (the warmest first) and a dialer."""

    __slots__ = (
        "host",
        "host_line",
        "idle",
        "idle_timeout",
        "label",
        "loop",
        "max_idle",
        "port",
        "retired",
        "tls",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.tls = tls  # https: verified (unless configured off), SNI = host
        self.label = f"{'https://' if tls else ''}{host}:{port}"
        # The end of a request line and the Host field, for heads sent to this address.
        authority = (f"[{host}]" if ":" in host else host).encode() + b":%d" % port
        self.host_line = b" HTTP/1.1\r\nHost: " + authority + b"\r\n"
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
            loop.create_connection(
                lambda: UpstreamProtocol(self),
                self.host,
                self.port,
                ssl=self.tls,
                server_hostname=self.host if self.tls is not None else None,
            )
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


# An endpoint's key: host, port, and for https the TLS settings (CA file, verify).
EndpointKey = tuple[str, int, tuple[str | None, bool] | None]


class Registry:
    """Endpoints by address (and TLS settings) for one worker; reloads reuse them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.endpoints: dict[EndpointKey, Endpoint] = {}

    def get(self, key: EndpointKey) -> Endpoint:
        endpoint = self.endpoints.get(key)
        if endpoint is None:
            host, port, tls = key
            context = client_context(*tls) if tls is not None else None
            endpoint = self.endpoints[key] = Endpoint(self.loop, host, port, context)
        return endpoint

    def retain(self, used: set[EndpointKey]) -> None:
        """Close idle connections of endpoints the live config no longer names."""
        for key in list(self.endpoints):
            if key not in used:
                endpoint = self.endpoints.pop(key)
                endpoint.retired = True
                endpoint.close_idle()

    def close_all(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.close_idle()
