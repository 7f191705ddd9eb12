"""UpstreamProtocol: one connection to an upstream; relays each response to the client.

It parses responses with httptools, rewrites the head for the client (hop-by-hop fields out,
framing chosen for the client's HTTP version), and streams the body. Output produced while
parsing one read is sent in one `writelines`. One timer per connection serves both the read
timeout (while busy) and the idle timeout (while pooled); it is re-armed only when it fires.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

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
    STATUS_LINES,
    UNLISTED,
    chunk,
    connection_tokens,
    drop_named,
    last_chunk,
)

if TYPE_CHECKING:
    from .pool import Endpoint

log = logging.getLogger("fastgw.upstream")

# How the body goes to the client.
BODY_NONE, BODY_RAW, BODY_CHUNKED, BODY_SWITCHING = range(4)


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "body_mode",
        "close_delimited",
        "endpoint",
        "exchange",
        "has_length",
        "idle_since",
        "idle_timeout",
        "in_head",
        "last_io",
        "out",
        "parser",
        "parts",
        "read_timeout",
        "received",
        "reused",
        "special",
        "timer",
        "trailers",
        "transport",
        "tunnel",
        "upgrade",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: Any = None
        self.parser = HttpResponseParser(self)
        self.exchange: Any = None
        self.parts: list[bytes] = []  # forwarded fields of the response head, as pieces
        self.special: list[tuple[int, bytes, bytes]] = []  # hop-by-hop (kind, name, value)
        self.has_length = False  # the head being parsed has a Content-Length
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.reused = False
        self.received = 0
        self.in_head = True
        self.body_mode = BODY_NONE
        self.close_delimited = False
        self.upgrade = b""
        self.out: list[bytes] = []
        self.tunnel: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_io = 0.0
        self.idle_since = 0.0
        self.read_timeout = 30.0
        self.idle_timeout = endpoint.idle_timeout

    # -- connection events -------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        exchange = self.exchange
        if self.tunnel is not None:
            self.tunnel.close()
        elif exchange is None:
            self.endpoint.forget(self)
        elif self.close_delimited and not self.in_head:
            self._end_of_response(reusable=False)
        else:
            self.exchange = None
            exchange.upstream_failed(self, "reset" if exc else "closed")

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause_reading_for_peer()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_reading_for_peer()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.exchange is None:
            self.transport.close()  # bytes on an idle connection: it is out of sync
            return
        self.received += len(data)
        self.last_io = self.endpoint.loop.time()
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self._start_tunnel(data[upgrade.args[0] :])
        except HttpParserError as exc:
            if isinstance(exc, HttpParserCallbackError):
                log.error("internal error while relaying a response", exc_info=exc.__context__)
            exchange = self.exchange
            if exchange is not None:
                self.exchange = None
                self.transport.close()
                exchange.upstream_failed(self, "invalid")
            return
        if self.out:
            self._flush()

    def _flush(self) -> None:
        out = self.out
        self.out = []
        self.exchange.client.transport.writelines(out)

    # -- parser callbacks ----------------------------------------------------------------

    # PERF: no on_status callback: the status line is the standard one (headers.STATUS_LINES).

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            # PERF: each field is sorted once, here: forwarded as it is, or looked at below.
            kind = RESPONSE_KINDS_SENT.get(name, UNLISTED)
            if kind is UNLISTED:
                kind = RESPONSE_KINDS.get(name.lower())
            if kind is None:
                self.parts += (name, b": ", value, b"\r\n")
            elif kind == R_CONTENT_LENGTH:
                self.parts += (name, b": ", value, b"\r\n")  # forwarded; it frames the body
                self.has_length = True
            else:
                self.special.append((kind, name, value))
        else:
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        parts = self.parts
        self.parts = []
        has_length = self.has_length
        self.has_length = False
        chunked = False
        if self.special:
            parts, chunked = self._hop_by_hop(parts)
        if status < 200 and status != 101:
            return  # an interim response (100, 103): dropped, as nginx does
        exchange = self.exchange
        exchange.response_started()
        self.in_head = False
        exchange.status = status
        if exchange.route.response:
            exchange.run_response_hooks(status, parts)
        if status == 101:
            parts += (b"Connection: upgrade\r\nUpgrade: ", self.upgrade, b"\r\n")
            self.body_mode = BODY_SWITCHING
        else:
            if exchange.is_head or status == 204 or status == 304:
                self.body_mode = BODY_NONE
            elif has_length:
                self.body_mode = BODY_RAW
            else:
                self.close_delimited = not chunked  # else the body ends when the upstream closes
                if exchange.http11:
                    parts.append(b"Transfer-Encoding: chunked\r\n")
                    self.body_mode = BODY_CHUNKED
                else:
                    self.body_mode = BODY_RAW
                    exchange.close_after = True  # an HTTP/1.0 client: the body ends at close
            if exchange.close_after:
                parts.append(b"Connection: close\r\n")
            elif not exchange.http11:
                parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self.out.append(STATUS_LINES[status] + b"".join(parts))
        if exchange.is_head and status != 101:
            # PERF: httptools cannot be told that a response answers HEAD; it would wait for a
            # body. The response ends here and a fresh parser takes the next one.
            reusable = self.parser.should_keep_alive()
            self.parser = HttpResponseParser(self)
            self._end_of_response(reusable)

    def _hop_by_hop(self, parts: list[bytes]) -> tuple[list[bytes], bool]:
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
            elif kind == R_UPGRADE:
                self.upgrade = value
        return (drop_named(parts, named) if named else parts), chunked

    def on_body(self, data: bytes) -> None:
        if self.exchange is None:
            self.transport.close()  # a body after a HEAD response: out of sync
            return
        if self.body_mode == BODY_RAW:
            self.out.append(data)
        elif self.body_mode == BODY_CHUNKED:
            self.out += chunk(data)

    def on_message_complete(self) -> None:
        if self.exchange is None or self.in_head or self.body_mode == BODY_SWITCHING:
            return  # an interim response, after HEAD, or a 101 whose tunnel starts next
        self._end_of_response(self.parser.should_keep_alive())

    def _end_of_response(self, reusable: bool) -> None:
        if self.body_mode == BODY_CHUNKED:
            self.out.append(last_chunk(self.trailers))
        if self.out:
            self._flush()
        exchange = self.exchange
        self.exchange = None
        self.in_head = True
        self.trailers = None
        self.close_delimited = False
        exchange.response_complete(self, reusable)

    def _start_tunnel(self, rest: bytes) -> None:
        """After a 101: the exchange hands both transports over to a byte tunnel."""
        if self.out:
            self._flush()
        exchange = self.exchange
        self.exchange = None
        client = exchange.client
        self.tunnel = client.transport
        client.start_tunnel(self, exchange)
        if rest:
            self.tunnel.write(rest)

    # -- lifecycle driven by the exchange and the pool ---------------------------------------

    def dispatch(self, exchange: Any, now: float, read_timeout: float) -> None:
        """Bind to an exchange; the read timeout runs from now."""
        self.exchange = exchange
        self.received = 0
        self.last_io = now
        self.read_timeout = read_timeout
        if self.timer is None:
            self.timer = self.endpoint.loop.call_at(now + self.tick(), self._on_timer)

    def park(self, now: float, idle_timeout: float) -> None:
        """Back to the pool: the next dispatch is a reuse."""
        self.reused = True
        self.idle_since = now
        self.idle_timeout = idle_timeout
        if self.timer is None:
            self.timer = self.endpoint.loop.call_at(now + self.tick(), self._on_timer)

    def tick(self) -> float:
        """The longest the timer sleeps, so that neither deadline is missed."""
        return min(self.read_timeout, self.idle_timeout)

    def abort(self) -> None:
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()

    def _on_timer(self) -> None:
        # PERF: one timer per connection, never per request; it re-arms itself for the
        # nearest deadline and never sleeps longer than the shorter of the two timeouts.
        now = self.endpoint.loop.time()
        self.timer = None
        if self.tunnel is not None or self.transport.is_closing():
            return
        exchange = self.exchange
        if exchange is not None:
            due = self.last_io + self.read_timeout
            if now >= due:
                self.exchange = None
                self.transport.abort()
                exchange.upstream_failed(self, "timeout")
                return
        else:
            due = self.idle_since + self.idle_timeout
            if now >= due:
                self.endpoint.forget(self)
                self.transport.close()
                return
        self.timer = self.endpoint.loop.call_at(min(due, now + self.tick()), self._on_timer)
