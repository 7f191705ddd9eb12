"""A small Redis client for the gateway's decisions: RESP over asyncio Protocols, parsed by
hiredis (the Redis project's C parser).

Why not redis-py's asyncio client: measured here, it costs about 100 us of CPU per round trip
(its stream, retry and pool layers) against 23 us for this (bench/README.md, "Redis"); at the
request rates of the latency scenario, where decisions rarely batch, that alone added 0.6 ms
to the median. This client does only what the decisions need: a few connections, commands
pipelined on them (replies come back in order), AUTH and SELECT on connect, TLS for
`rediss://`, and no retries of its own (the caller bounds every call and backs off).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis


class RedisReplyError(Exception):
    """Redis answered a command with an error (`NOSCRIPT ...`, `WRONGPASS ...`)."""


class Address:
    """Where and how to connect, from a `redis://`, `rediss://` or `unix://` URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        self.tls = parts.scheme == "rediss"
        self.path = parts.path if parts.scheme == "unix" else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password is not None else None
        db = parts.path.strip("/") if self.path is None else options.get("db", "0")
        self.db = int(db) if db.isdigit() else 0
        self.context: ssl.SSLContext | None = None
        if self.tls:
            # The system's CAs, or `?ssl_ca_certs=FILE` (redis-py's name for it).
            self.context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
            if options.get("ssl_cert_reqs") == "none":
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE

    def handshake(self) -> list[tuple[Any, ...]]:
        """The commands that make a new connection ready."""
        commands: list[tuple[Any, ...]] = []
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            commands.append(("AUTH", *auth))
        if self.db:
            commands.append(("SELECT", self.db))
        commands.append(("CLIENT", "SETNAME", "fastgw"))
        return commands


class RedisConnection(asyncio.Protocol):
    """One connection: commands are written as they come, replies answer them in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=RedisReplyError)
        self.waiting: deque[asyncio.Future] = deque()
        self.transport: Any = None
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                future = self.waiting.popleft()
                if future.done():
                    continue  # its caller gave up (timed out); the order is kept
                if isinstance(reply, RedisReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):
            self.transport.abort()  # not a Redis (or out of step): connection_lost fails all

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("redis closed the connection"))

    def call(self, *args: Any) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(ConnectionError("redis connection closed"))
            return future
        self.transport.write(hiredis.pack_command(args))
        self.waiting.append(future)
        return future

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abort()


class RedisClient:
    """Up to `size` connections, opened when first needed and again after they fail or are
    closed; calls take them in turn."""

    def __init__(
        self, url: str, size: int, connect_timeout: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.address = Address(url)
        self.connect_timeout = connect_timeout
        self.loop = loop
        self.slots: list[asyncio.Future | None] = [None] * size  # a connection, or its opening
        self.turn = 0

    def ready(self) -> RedisConnection | None:
        """The next open connection in turn, or None when it must be opened (`connection`)."""
        slot = self.slots[self.turn]
        if slot is not None and slot.done() and not slot.cancelled() and slot.exception() is None:
            connection = slot.result()
            if not connection.closed:
                self.turn = (self.turn + 1) % len(self.slots)
                return connection
        return None

    async def connection(self) -> RedisConnection:
        """The next connection in turn, opened if it is not (several callers share one
        opening)."""
        index = self.turn
        self.turn = (index + 1) % len(self.slots)
        slot = self.slots[index]
        if slot is not None and slot.done():
            if not slot.cancelled() and slot.exception() is None and not slot.result().closed:
                return slot.result()
            slot = None
        if slot is None:
            slot = self.slots[index] = self.loop.create_task(self.open())
            slot.add_done_callback(ignored)  # a failure is its callers' to report
        return await asyncio.shield(slot)

    async def open(self) -> RedisConnection:
        async with asyncio.timeout(self.connect_timeout):
            return await self.connect()

    async def connect(self) -> RedisConnection:
        address = self.address
        if address.path is not None:
            _, connection = await self.loop.create_unix_connection(RedisConnection, address.path)
        else:
            _, connection = await self.loop.create_connection(
                RedisConnection,
                address.host,
                address.port,
                ssl=address.context,
                server_hostname=address.host if address.tls else None,
            )
        try:
            for command in address.handshake():
                await connection.call(*command)
        except BaseException:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        """Close every open connection (an opening one ends by its own timeout)."""
        for index, slot in enumerate(self.slots):
            if slot is not None and slot.done():
                if not slot.cancelled() and slot.exception() is None:
                    slot.result().close()
                self.slots[index] = None


def ignored(future: asyncio.Future) -> None:
    """A done callback for a result no one waits for: its error is retrieved (else asyncio
    logs "exception was never retrieved")."""
    if not future.cancelled():
        future.exception()
