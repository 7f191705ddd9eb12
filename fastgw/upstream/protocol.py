"""UpstreamProtocol: one connection to an upstream; parses responses and hands them on.

It parses each response with httptools, drops its hop-by-hop fields, and hands the head, the
body pieces and the end to the exchange it serves (its `Receiver`); it never writes to the
client. While it serves an exchange, one deadline bounds the attempt: it runs from the last
progress in either direction (request bytes sent, response bytes received) for the routed
upstream's read timeout, and stands still while the gateway itself has paused reading (a slow
client). While pooled, the same timer enforces the idle timeout. It is re-armed only when it
fires, or when a new attempt needs an earlier deadline than the one pending.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Protocol

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

from ..http.headers import (
    CONNECTION_OPTIONS,
    R_CONNECTION,
    R_CONTENT_LENGTH,
    R_TE,
    R_UPGRADE,
    RESPONSE_KINDS,
    RESPONSE_KINDS_SENT,
    UNLISTED,
    connection_tokens,
    drop_named,
)
from .outcomes import INVALID, RESET, TIMEOUT

log = logging.getLogger("fastgw.upstream")

# How the upstream frames the response body.
FRAMED_BY_LENGTH, FRAMED_BY_CHUNKS, FRAMED_BY_CLOSE = range(3)


class Receiver(Protocol):
    """What the connection hands a response to (the exchange)."""

    def response_head(self, status: int, fields: list[bytes], framing: int, now: float) -> bool:
        """The head; True when no body follows although the framing says one might (HEAD)."""

    def response_body(self, data: bytes) -> None: ...

    def response_read(self) -> None:
        """One read from the upstream has been handed over (send what it produced)."""

    def response_end(
        self,
        conn: UpstreamProtocol,
        reusable: bool,
        trailers: list[tuple[bytes, bytes]] | None,
        now: float,
    ) -> None: ...

    def upstream_failed(self, conn: UpstreamProtocol, outcome: str, now: float) -> None: ...

    def upstream_write_paused(self) -> None: ...

    def upstream_write_resumed(self) -> None: ...

    def tunnel_started(self, conn: UpstreamProtocol, rest: bytes) -> None: ...

    def tunnel_ended(self, now: float) -> None: ...

    def waiting_on_client(self) -> bool:
        """The request is not all sent and nothing is left to send: the client is slow."""


class Owner(Protocol):
    """The pool a connection belongs to (its host)."""

    loop: Any

    def opened(self) -> None: ...

    def lost(self, conn: UpstreamProtocol) -> None:
        """The connection closed (idle or not)."""

    def forget(self, conn: UpstreamProtocol) -> None:
        """An idle connection is being closed: out of the pool."""


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "close_delimited",
        "exchange",
        "fields",
        "has_length",
        "idle_since",
        "idle_timeout",
        "in_head",
        "loop",
        "owner",
        "parser",
        "paused_at",
        "progress",
        "read_timeout",
        "received",
        "reused",
        "special",
        "timer",
        "timer_due",
        "trailers",
        "transport",
        "tunnel",
        "upgrade",
    )

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.loop = owner.loop
        self.transport: Any = None
        self.parser = HttpResponseParser(self)
        self.exchange: Any = None  # the Receiver served now
        self.fields: list[bytes] = []  # forwarded fields of the head being parsed, as pieces
        self.special: list[tuple[int, bytes, bytes]] = []  # hop-by-hop (kind, name, value)
        self.has_length = False  # the head being parsed has a Content-Length
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.reused = False
        self.received = 0
        self.in_head = True
        self.close_delimited = False
        self.upgrade = b""
        self.tunnel: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        self.progress = 0.0  # the attempt's last progress, either way
        self.read_timeout = 0.0
        self.paused_at = 0.0  # when the gateway paused reading (a slow client); 0: not paused
        self.idle_since = 0.0
        self.idle_timeout = 0.0

    # -- connection events -------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.owner.opened()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.owner.lost(self)
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        now = self.loop.time()
        if self.tunnel is not None:
            self.tunnel.close()
            exchange.tunnel_ended(now)
        elif self.close_delimited and not self.in_head and exc is None:
            self.close_delimited = False
            self.in_head = True
            exchange.response_end(self, False, None, now)
        else:
            exchange.upstream_failed(self, RESET, now)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_resumed()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        exchange = self.exchange
        if exchange is None:
            self.transport.close()  # bytes on an idle connection: it is out of sync
            return
        self.received += len(data)
        self.progress = self.loop.time()
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            exchange.tunnel_started(self, data[upgrade.args[0] :])
            return
        except HttpParserError as exc:
            if isinstance(exc, HttpParserCallbackError):
                log.error("internal error while relaying a response", exc_info=exc.__context__)
            if self.exchange is not None:
                self.exchange = None
                self.transport.close()
                exchange.upstream_failed(self, INVALID, self.progress)
            return
        if self.exchange is not None:
            exchange.response_read()

    # -- parser callbacks ----------------------------------------------------------------

    # PERF: no on_status callback: the status line is the standard one (headers.STATUS_LINES).

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            # PERF: each field is sorted once, here: forwarded as it is, or looked at below.
            kind = RESPONSE_KINDS_SENT.get(name, UNLISTED)
            if kind is UNLISTED:
                kind = RESPONSE_KINDS.get(name.lower())
            if kind is None:
                self.fields += (name, b": ", value, b"\r\n")
            elif kind == R_CONTENT_LENGTH:
                self.fields += (name, b": ", value, b"\r\n")  # forwarded; it frames the body
                self.has_length = True
            else:
                self.special.append((kind, name, value))
        else:
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        fields = self.fields
        self.fields = []
        framing = FRAMED_BY_LENGTH if self.has_length else FRAMED_BY_CLOSE
        self.has_length = False
        if self.special:
            fields, chunked = self._hop_by_hop(fields, status)
            if chunked:
                framing = FRAMED_BY_CHUNKS
        if status < 200:
            if status == 101:  # the tunnel starts when the parser stops at the upgrade
                self.exchange.response_head(101, fields, FRAMED_BY_CLOSE, self.progress)
            return  # an interim response (100, 103): dropped, as nginx does
        self.in_head = False
        if framing == FRAMED_BY_CLOSE:
            self.close_delimited = True  # the body ends when the upstream closes
        if self.exchange.response_head(status, fields, framing, self.progress):
            # PERF: httptools cannot be told that a response answers HEAD; it would wait for a
            # body. The response ends here and a fresh parser takes the next one.
            reusable = self.parser.should_keep_alive()
            self.parser = HttpResponseParser(self)
            self._end(reusable)

    def _hop_by_hop(self, fields: list[bytes], status: int) -> tuple[list[bytes], bool]:
        """Apply the head's hop-by-hop fields (none are forwarded): drop the fields named in
        `Connection`, keep `Upgrade` for a 101; True when the body is chunked."""
        special = self.special
        self.special = []
        chunked = False
        named: set[bytes] | None = None
        for kind, _name, value in special:
            if kind == R_TE:
                chunked = True
            elif kind == R_CONNECTION:
                extra = connection_tokens(value) - CONNECTION_OPTIONS
                if extra:
                    named = extra if named is None else named | extra
            elif kind == R_UPGRADE and status == 101:
                self.upgrade = value
        if named:
            fields = drop_named(fields, named)
        if status == 101:
            fields += (b"Upgrade: ", self.upgrade, b"\r\n")
        return fields, chunked

    def on_body(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.transport.close()  # a body after a HEAD response: out of sync
            return
        exchange.response_body(data)

    def on_message_complete(self) -> None:
        if self.exchange is None or self.in_head:
            return  # an interim response, or after HEAD
        self._end(self.parser.should_keep_alive())

    def _end(self, reusable: bool) -> None:
        exchange = self.exchange
        self.exchange = None
        self.in_head = True
        self.close_delimited = False
        trailers = self.trailers
        self.trailers = None
        exchange.response_end(self, reusable, trailers, self.progress)

    # -- driven by the exchange and the pool -------------------------------------------------

    def dispatch(self, exchange: Receiver, now: float, read_timeout: float) -> None:
        """Serve an exchange; its deadline runs from now for its upstream's read timeout."""
        self.exchange = exchange
        self.received = 0
        self.progress = now
        self.read_timeout = read_timeout
        due = now + read_timeout
        # PERF: the pending timer is kept when it fires first anyway (it re-arms for the rest).
        if self.timer is None or self.timer_due > due:
            self._arm(due)

    def park(self, now: float, idle_timeout: float) -> None:
        """Back in the pool: the next dispatch is a reuse; closed when idle for too long."""
        self.reused = True
        self.idle_since = now
        self.idle_timeout = idle_timeout
        due = now + idle_timeout
        if self.timer is None or self.timer_due > due:
            self._arm(due)

    def pause_reading(self, now: float) -> None:
        """The client cannot take more: stop reading; the deadline stands still meanwhile."""
        if not self.paused_at:
            self.paused_at = now
            self.transport.pause_reading()

    def resume_reading(self, now: float) -> None:
        if self.paused_at:
            self.progress += now - self.paused_at
            self.paused_at = 0.0
            self.transport.resume_reading()

    def sent(self, at: float) -> None:
        """Request bytes that arrived at `at` went out: progress (never moved back)."""
        if at > self.progress:
            self.progress = at

    def start_tunnel(self, client_transport: Any) -> None:
        """After a 101: bytes from now on go to the client as they come; the exchange stays
        attached until the tunnel closes."""
        self.tunnel = client_transport

    def abort(self) -> None:
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()

    def _arm(self, due: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_due = due
        self.timer = self.loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        now = self.loop.time()
        self.timer = None
        if self.tunnel is not None or self.transport.is_closing():
            return
        exchange = self.exchange
        if exchange is not None:
            if self.paused_at or exchange.waiting_on_client():
                # Not the upstream's silence: the client is slow to read or to send.
                due = now + self.read_timeout
            else:
                due = self.progress + self.read_timeout
                if now >= due:
                    self.exchange = None
                    self.transport.abort()
                    exchange.upstream_failed(self, TIMEOUT, now)
                    return
        else:
            due = self.idle_since + self.idle_timeout
            if now >= due:
                self.owner.forget(self)
                self.transport.close()
                return
        self._arm(due)
