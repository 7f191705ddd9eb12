"""ClientProtocol: one client connection; parses requests and serves them in order.

Pipelined requests queue behind the one being served (reading pauses while they wait), so
responses leave in request order. Reading also pauses while the upstream's write buffer is
full or while a body waits for an upstream connection. One timer per connection covers the
header timeout (408), the keep-alive idle timeout and, while a request is served, the
client's own slowness: a body that stops arriving (408) and a response it stops reading
(reset). It is re-armed only when it fires.

It is the `Downstream` of the exchanges it serves: they use nothing else of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from ..plugins.base import FIRST_WATCHED
from ..tls import peer_subjects
from .addresses import parse_address
from .exchange import Exchange
from .headers import K_HOST, UNLISTED
from .replies import error_body, reply

if TYPE_CHECKING:
    from ..site import Site

log = logging.getLogger("fastgw.client")

# Why reading is paused (bits).
PAUSE_PIPELINE, PAUSE_PEER, PAUSE_BUFFER, PAUSE_DEAD = 1, 2, 4, 8

UNPARSED: Any = object()

# SO_LINGER on, 0 seconds: closing the socket sends a reset, which every client sees as an
# error (a FIN could pass for the end of a close-delimited body).
LINGER_RESET = struct.pack("ii", 1, 0)


class Serving(Protocol):
    """What a connection needs of its worker."""

    loop: Any
    connections: set[Any]
    draining: bool

    def next_request_id(self) -> bytes: ...


class Reject(Exception):
    """Raised in a parser callback: the request breaks a limit."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class ClientProtocol(asyncio.Protocol):
    __slots__ = (
        "body_at",
        "body_timeout",
        "current",
        "draining",
        "forwarded",
        "fresh",
        "fwd",
        "head_raw",
        "head_start",
        "header_timeout",
        "host",
        "idle_limit",
        "idle_since",
        "in_feed",
        "in_head",
        "keepalive",
        "kinds",
        "loop",
        "max_header",
        "max_line",
        "measure_head",
        "next_request_id",
        "parser",
        "parsing",
        "paused",
        "peer",
        "peer_address",
        "peer_subjects",
        "proto_line",
        "queue",
        "runtime",
        "send_timeout",
        "site",
        "special",
        "timer",
        "transport",
        "tunnel",
        "tunnel_early",
        "url",
        "worker",
        "write_paused",
        "write_paused_at",
    )

    def __init__(self, worker: Serving, site: Site) -> None:
        self.worker = worker
        self.loop = worker.loop
        self.next_request_id = worker.next_request_id
        self.draining = False
        self.site = site
        self.runtime = site.runtime  # the one the request being parsed was started under
        self.kinds = self.runtime.header_kinds
        self.transport: Any = None
        self.parser: Any = HttpRequestParser(self)
        self.url = b""
        self.host: bytes | None = None  # the request's Host field
        self.fwd: list[bytes] = []  # forwarded fields, as `name: value\r\n` pieces
        self.special: list[tuple[int, bytes, bytes]] = []  # (kind, name, value) for the gateway
        self.head_raw = 0
        self.head_start: float | None = None
        self.in_head = False
        self.measure_head = False
        self.parsing: Exchange | None = None
        self.current: Exchange | None = None
        self.queue: deque[Exchange] | None = None
        self.paused = 0
        self.write_paused = False
        self.write_paused_at = 0.0
        self.body_at = 0.0  # when the body being read last made progress (Downstream)
        self.in_feed = False
        self.timer: asyncio.TimerHandle | None = None
        self.tunnel: Any = None
        self.tunnel_early: list[bytes] | None = None
        self.peer = b""
        self.peer_subjects: tuple[str, ...] | None = None  # a verified client certificate's
        self.peer_address: Any = UNPARSED  # `peer` as an ipaddress object, once a plugin asks

    # -- connection events -------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        worker = self.worker
        runtime = self.site.runtime
        limits = runtime.limits
        timeouts = runtime.timeouts
        self.max_line = limits.max_request_line
        self.max_header = limits.max_header_bytes
        self.header_timeout = timeouts.client_header
        self.keepalive = timeouts.keepalive
        self.body_timeout = timeouts.client_body
        self.send_timeout = timeouts.send
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"unknown"
        self.proto_line = self.site.proto_line
        self.forwarded = b"X-Forwarded-For: " + self.peer + self.proto_line
        if self.site.tls is not None:
            self.peer_subjects = peer_subjects(transport.get_extra_info("ssl_object"))
        if len(worker.connections) >= limits.max_connections:
            transport.write(reply(503, error_body(503, "too many connections", b""), close=True))
            transport.close()
            return
        if worker.draining:
            # Accepted just before the drain began (or a probe of the admin listener, which
            # answers until the drain ends): served, then closed.
            self.draining = True
        if not (worker.draining and self.site.admin):  # the drain does not wait for probes
            worker.connections.add(self)
        now = self.loop.time()
        self.idle_since = now
        self.fresh = True  # no request answered yet
        self.idle_limit = self.header_timeout  # the first request must come within this time
        self.timer = self.loop.call_at(now + self.header_timeout, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        if self.current is not None:
            self.current.client_gone()
            self.current = None
        if self.queue:
            self.queue.clear()
        self.parser = None

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        parser = self.parser
        if parser is None:
            if self.tunnel_early is not None:
                self.tunnel_early.append(data)  # bytes after an upgrade request, before the 101
            return
        self.in_feed = True
        # PERF: a head that arrives within one read no larger than the header limit cannot
        # break it: only heads spread over reads, or bigger reads, are measured exactly.
        self.measure_head = self.head_raw > 0 or len(data) > self.max_header
        try:
            parser.feed_data(data)
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Reject):
                self.reject(cause.status, cause.message)
            else:
                log.error("internal error while handling a request", exc_info=cause)
                self.reject(500, "internal error")
        except HttpParserUpgrade as upgrade:
            self.upgrade_requested(data[upgrade.args[0] :])
        except HttpParserError:
            self.reject(400, "malformed request")
        finally:
            self.in_feed = False
        current = self.current
        if current is not None and current.pending:
            current.flush()
        if self.in_head and self.parser is not None:
            # A head still arriving: its timeout runs from now; bound what httptools buffers.
            if self.head_start is None:
                self.head_start = self.loop.time()
                if self.timer is None:
                    self.timer = self.loop.call_at(
                        self.head_start + self.header_timeout, self._on_timer
                    )
            self.head_raw += len(data)
            if self.head_raw > self.max_header + self.max_line:
                self.reject(431, "request header too large")

    def pause_writing(self) -> None:
        now = self.write_paused_at = self.loop.time()
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.current is not None:
            self.current.client_write_paused(now)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.current is not None:
            self.current.client_write_resumed(self.loop.time())

    # -- reading flow control --------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self.paused:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.transport.is_closing():
                self.body_at = self.loop.time()  # the client is not to blame for our pause
                self.transport.resume_reading()

    def pause_reading_for_peer(self) -> None:
        self._pause(PAUSE_PEER)

    def resume_reading_for_peer(self) -> None:
        self._resume(PAUSE_PEER)

    def pause_reading_for_buffer(self) -> None:
        self._pause(PAUSE_BUFFER)

    def resume_reading_for_buffer(self) -> None:
        self._resume(PAUSE_BUFFER)

    # -- parser callbacks ------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # PERF: no on_message_begin callback; a request begins with the first piece of its URL.
        if self.in_head:
            self.url += url  # the request line arrived over several reads
        else:
            # A request is served by the runtime live when it began, even if a reload follows.
            self.runtime = runtime = self.site.runtime
            self.kinds = runtime.header_kinds
            self.url = url
            self.host = None
            self.fwd = []
            self.special = []
            self.in_head = True
        if len(self.url) > self.max_line:
            raise Reject(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.parsing is None:
            # PERF: each field is sorted once, here: forwarded as it is, or kept for the gateway.
            kind = self.kinds.get(name, UNLISTED)
            if kind is UNLISTED:
                kind = self.kinds.get(name.lower())
            if kind is None:
                self.fwd += (name, b": ", value, b"\r\n")
            elif kind == K_HOST and self.host is None:
                self.host = value  # PERF: the one field nearly every request has, kept apart
            else:
                self.special.append((kind, name, value))
                if kind >= FIRST_WATCHED:  # read by a plugin, and forwarded
                    self.fwd += (name, b": ", value, b"\r\n")
        else:
            self.parsing.request_trailer(name, value)

    def on_headers_complete(self) -> None:
        if self.measure_head:
            size = len(self.url) + sum(map(len, self.fwd)) + len(self.host or b"") + 8
            size += sum(len(n) + len(v) + 4 for _, n, v in self.special)
            if size > self.max_header:
                raise Reject(431, "request header too large")
        self.in_head = False
        if self.head_raw:  # the head came over several reads
            self.head_start = None
            self.head_raw = 0
        exchange = Exchange(
            self, self.parser, self.runtime, self.url, self.host, self.fwd, self.special
        )
        self.parsing = exchange
        if not exchange.body_done:
            self.body_at = self.loop.time()
        self.serve(exchange)

    def on_body(self, data: bytes) -> None:
        self.body_at = self.loop.time()
        self.parsing.request_body(data)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        self.parsing = None
        exchange.request_complete()

    # -- serving in order ------------------------------------------------------------------

    def serve(self, exchange: Exchange) -> None:
        """Start the exchange now, or queue it behind the one in flight (pipelining)."""
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append(exchange)
            self._pause(PAUSE_PIPELINE)

    def exchange_finished(self, exchange: Exchange, now: float) -> None:
        """The response has been written: close, serve the next queued request, or go idle."""
        if exchange is not self.current:
            return
        route = exchange.route
        if route is None or route.log:  # PERF: a route without log hooks skips the call
            exchange.report_end(now)
        if exchange.close_after or not exchange.body_done:
            self.current = None
            self.close()
            return
        queue = self.queue
        if queue:
            following = queue.popleft()
            if not queue:
                self._resume(PAUSE_PIPELINE)
            self.current = following
            following.start()
            if not self.in_feed:
                following.flush()
            return
        self.current = None
        if self.draining:
            self.close()
            return
        self.idle_since = now
        self.idle_limit = self.keepalive
        self.fresh = False
        if self.timer is None:
            self.timer = self.loop.call_at(
                now + min(self.keepalive, self.header_timeout), self._on_timer
            )

    def reject(self, status: int, message: str) -> None:
        """The byte stream broke the protocol or a limit: answer in turn, then close."""
        self.parser = None
        self.in_head = False
        self.head_start = None
        self._pause(PAUSE_DEAD)
        parsing = self.parsing
        if parsing is not None:
            # The error is inside a body: that request fails.
            self.parsing = None
            parsing.close_after = True
            if parsing is self.current:
                if parsing.state >= 3:  # RESPONDING or DONE: nothing more can be said
                    self.abort()
                else:
                    parsing.drop_upstream()
                    parsing.local_error(status, message)
            else:
                parsing.error = (status, message)
            return
        exchange = Exchange.__new__(Exchange)
        exchange.rejected(self, self.site.runtime, status, message)
        self.serve(exchange)

    def upgrade_requested(self, rest: bytes) -> None:
        """The parser stopped after an upgrade request (websocket, CONNECT, h2c...)."""
        if self.transport.is_closing():
            return
        last = self.queue[-1] if self.queue else self.current
        if last is not None and last.method == b"CONNECT":
            self.parser = None
            self._pause(PAUSE_DEAD)
            return
        if last is not None and last.upgrade is not None and last.error is None:
            self.parser = None
            self.tunnel_early = [rest] if rest else []
            self._pause(PAUSE_PIPELINE)
            return
        # Not a websocket upgrade: carry on with HTTP as if the upgrade was not offered.
        self.parser = HttpRequestParser(self)
        if rest:
            self.data_received(rest)

    def start_tunnel(self, upstream_transport: Any) -> None:
        """The upstream answered 101: from now on bytes pass through unchanged both ways."""
        self.current = None
        self.tunnel = upstream_transport
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        early = self.tunnel_early or []
        self.tunnel_early = None
        for data in early:
            self.tunnel.write(data)
        self.paused = 0
        self.transport.resume_reading()

    # -- ending ----------------------------------------------------------------------------

    def close(self) -> None:
        self.parser = None
        self.transport.close()

    def abort(self) -> None:
        """Reset the connection: the client sees an error, never a clean end."""
        self.parser = None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.transport.abort()

    def address(self) -> Any:
        """The peer's address as an ipaddress object (parsed once per connection), or None."""
        if self.peer_address is UNPARSED:
            self.peer_address = parse_address(self.peer)
        return self.peer_address

    def busy(self) -> bool:
        """A request is being served or arriving."""
        return self.current is not None or self.in_head or self.tunnel is not None

    def close_if_idle(self) -> None:
        """Draining: close now unless a request is in flight or arriving. A connection that
        has not sent its first request yet (just accepted) is left to send it: closing it
        would reset a request already on its way (its header timeout still applies)."""
        if not self.busy() and not self.fresh:
            self.close()

    def _on_timer(self) -> None:
        # PERF: one timer per connection, never per request; it sleeps at most the header
        # timeout and re-arms itself for the nearest deadline.
        self.timer = None
        if self.transport.is_closing() or self.tunnel is not None:
            return
        now = self.loop.time()
        current = self.current
        if current is not None:
            due = self._check_client(current, now)
            if due < 0:
                return
        elif self.head_start is not None:
            due = self.head_start + self.header_timeout
            if now >= due:
                self.parser = None
                self.transport.write(
                    reply(408, error_body(408, "request header timeout", b""), close=True)
                )
                self.transport.close()
                return
        else:
            due = self.idle_since + self.idle_limit
            if now >= due:
                self.close()
                return
        self.timer = self.loop.call_at(min(due, now + self.header_timeout), self._on_timer)

    def _check_client(self, current: Exchange, now: float) -> float:
        """While a request is served: is the client too slow? The next due time, or -1 when
        the connection was ended."""
        if self.write_paused:
            due = self.write_paused_at + self.send_timeout
            if now >= due:
                log.info(
                    "client %s read nothing for %gs; connection reset",
                    self.peer.decode("latin-1"),
                    self.send_timeout,
                )
                self.abort()
                return -1.0
            return due
        if not current.body_done and not self.paused:
            due = self.body_at + self.body_timeout
            if now >= due:
                self.parser = None
                self._pause(PAUSE_DEAD)
                current.body_timed_out()
                return -1.0
            return due
        return now + self.header_timeout
