"""Exchange: one request and its response, from the parsed head to the last byte.

It routes the request, runs the route's plugins, picks a host of the routed upstream and makes
attempts on it: an attempt starts when a host is chosen and ends in exactly one call to
`Host.attempt_ended` with its outcome and timings, whatever ends it. A stale pooled connection
is replaced within the same attempt; a failed connect moves on to another host (a new
attempt). The upstream connection hands the response over piece by piece (head, body, end);
the exchange decides what reaches the client: today it writes through, after the route's
response hooks and body hooks. It answers errors itself, as JSON.

It talks to its client connection only through `Downstream`, and to its upstream connection
only through the methods of UpstreamProtocol meant for it.
"""

from __future__ import annotations

import logging
from asyncio import isfuture
from functools import partial
from inspect import isawaitable
from typing import TYPE_CHECKING, Any, Protocol

from httptools import HttpParserInvalidURLError, parse_url

from ..logs import Throttled, open_file_limit
from ..plugins.base import Reply
from ..router import Allow, strip_prefix
from ..upstream.host import DIAL_NO_DESCRIPTORS, describe_dial_failure
from ..upstream.outcomes import (
    CLIENT_ABORT,
    CONNECT_ERROR,
    GATEWAY_ERROR,
    INVALID,
    OK,
    RESET,
    TIMEOUT,
)
from ..upstream.protocol import FRAMED_BY_LENGTH
from .headers import (
    CONNECTION_OPTIONS,
    K_CONNECTION,
    K_CONTENT_LENGTH,
    K_EXPECT,
    K_HOST,
    K_REQUEST_ID,
    K_TE,
    K_TRACEPARENT,
    K_UPGRADE,
    K_XFF,
    REQUEST_ID_MAX,
    STATUS_LINES,
    chunk,
    connection_tokens,
    drop_named,
    last_chunk,
)
from .paths import NEEDS_NORMALISING, PathError, normalise
from .replies import CONTINUE, error_body, reply
from .view import UNSET, RequestView

if TYPE_CHECKING:
    from ..upstream.host import Host
    from ..upstream.protocol import UpstreamProtocol

log = logging.getLogger("fastgw.proxy")
out_of_descriptors = Throttled(log, 10.0)

# Request states.
WAITING, CONNECTING, SENDING, RESPONDING, DONE = range(5)

# How the response body goes to the client.
BODY_NONE, BODY_RAW, BODY_CHUNKED = range(3)

# Body bytes buffered while no upstream connection is attached before the client is paused.
BUFFER_LIMIT = 256 * 1024

NOTHING_SENT: tuple = ()  # `sent` of a request without a body: only its head goes out


class Downstream(Protocol):
    """What an exchange may use of the client connection it belongs to."""

    transport: Any
    loop: Any
    peer: bytes
    forwarded: bytes  # the X-Forwarded-For and -Proto lines of a request without X-F-F
    proto_line: bytes
    peer_subjects: tuple[str, ...] | None
    in_feed: bool  # inside data_received: writes wait for its end
    write_paused: bool
    draining: bool
    body_at: float  # when the request body last made progress (the loop's time)

    def next_request_id(self) -> bytes: ...

    def address(self) -> Any:
        """The peer's address (an ipaddress object), or None."""

    def pause_reading_for_buffer(self) -> None: ...

    def resume_reading_for_buffer(self) -> None: ...

    def pause_reading_for_peer(self) -> None: ...

    def resume_reading_for_peer(self) -> None: ...

    def exchange_finished(self, exchange: Exchange, now: float) -> None: ...

    def abort(self) -> None: ...

    def start_tunnel(self, upstream_transport: Any) -> None: ...


class Exchange(RequestView):
    __slots__ = (
        "added",
        "address",
        "attempts",
        "body_bytes",
        "body_done",
        "body_mode",
        "bytes_out",
        "chunked",
        "client",
        "close_after",
        "cluster",
        "conn",
        "connected_at",
        "consumer",
        "content_length",
        "copy",
        "ctx",
        "depth",
        "discard",
        "error",
        "expect",
        "fwd",
        "head",
        "head_at",
        "host",
        "http11",
        "is_head",
        "live",
        "logged",
        "match_path",
        "max_body",
        "method",
        "out",
        "path",
        "pending",
        "pending_bytes",
        "query",
        "received_at",
        "refused_by",
        "replayed",
        "request_id",
        "route",
        "runtime",
        "scopes",
        "sent",
        "sent_bytes",
        "span",
        "special",
        "started_at",
        "state",
        "status",
        "subject",
        "trace_id",
        "trailers",
        "tried",
        "upgrade",
        "upstream_host",
        "xff",
    )

    def __init__(
        self,
        client: Downstream,
        parser: Any,
        runtime: Any,
        url: bytes,
        host: bytes | None,
        fwd: list[bytes],
        special: list[tuple[int, bytes, bytes]],
    ) -> None:
        self.client = client
        self.runtime = runtime
        self.fwd = fwd
        self.special = special
        self.method = method = parser.get_method()
        keep_alive = parser.should_keep_alive()
        self.close_after = not keep_alive or client.draining
        self.is_head = method == b"HEAD"
        self.error: tuple[int, str] | None = None
        self.state = WAITING
        self.conn: UpstreamProtocol | None = None
        self.route: Any = None
        self.upstream_host: Host | None = None  # the host of the latest attempt
        self.attempts = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.body_bytes = 0
        self.status = 0
        self.host = host
        self.xff = self.request_id = self.upgrade = self.trace_id = None
        self.content_length = -1
        self.chunked = self.expect = False
        # PERF: most requests have no field but Host for the gateway to look at.
        connection_field = self.headers_from(special, parser) if special else False
        # PERF: get_http_version() formats a string. A keep-alive request with no Connection
        # field can only be HTTP/1.1 (1.0 needs `Connection: keep-alive`), so most skip it.
        if (keep_alive and not connection_field) or parser.get_http_version() == "1.1":
            self.http11 = True
            if self.host is None:
                self.refuse(400, "missing Host header")
        else:
            self.http11 = self.expect = False
        self.target_from(url)
        if self.chunked or self.content_length > 0:
            self.body_done = False
            self.sent: list[bytes] | tuple | None = []  # what went upstream, for a replay
            self.sent_bytes = 0
            self.discard = False
            self.copy: list[bytes] | None = None  # the body for a mirror, while it comes
            # Until routed, the largest body any route accepts; then the route's own limit.
            self.max_body = runtime.max_body
            if self.content_length > runtime.max_body:
                self.refuse(413, "request body too large")
        else:
            self.body_done = True
            self.sent = NOTHING_SENT
        if self.request_id is None:
            self.request_id = client.next_request_id()
        if self.upgrade is not None:
            self.close_after = True  # after the tunnel, or after a refused upgrade

    def rejected(self, client: Downstream, runtime: Any, status: int, message: str) -> None:
        """Initialise a stand-in for a request that could not be parsed (made with __new__)."""
        self.client = client
        self.runtime = runtime
        self.method = b""
        self.http11 = True
        self.is_head = False
        self.close_after = True
        self.error = (status, message)
        self.state = WAITING
        self.conn = None
        self.route = None
        self.upstream_host = None
        self.upgrade = None
        self.expect = False
        self.discard = False
        self.body_done = True
        self.pending = []
        self.request_id = client.next_request_id()
        # What the access log reads of any exchange.
        self.path = b"/"
        self.query = self.xff = self.trace_id = None
        self.special = []
        self.status = self.body_bytes = self.bytes_out = self.attempts = 0

    def headers_from(self, special: list[tuple[int, bytes, bytes]], parser: Any) -> bool:
        """Read the fields the gateway handles itself besides the first Host (the client
        sorted them while parsing); True when there is a Connection field."""
        connection_field = False
        named: set[bytes] | None = None
        for kind, _name, value in special:
            if kind == K_HOST:
                if self.host is not None:
                    self.refuse(400, "more than one Host header")
                self.host = value
            elif kind == K_CONTENT_LENGTH:
                self.content_length = int(value)  # llhttp has checked the digits and duplicates
            elif kind == K_XFF:
                self.xff = value if self.xff is None else self.xff + b", " + value
            elif kind == K_REQUEST_ID:
                if 0 < len(value) <= REQUEST_ID_MAX:
                    self.request_id = value
            elif kind == K_TE:
                if value.strip().lower() != b"chunked":
                    self.refuse(400, "unsupported Transfer-Encoding")
                self.chunked = True
            elif kind == K_CONNECTION:
                connection_field = True
                extra = connection_tokens(value) - CONNECTION_OPTIONS
                if extra:
                    named = extra if named is None else named | extra
            elif kind == K_UPGRADE:
                # Only websocket is tunnelled; other upgrades (h2c...) are dropped, HTTP goes on.
                if value.lower() == b"websocket" and parser.should_upgrade():
                    self.upgrade = value
            elif kind == K_EXPECT:
                self.expect = value.lower() == b"100-continue"
            elif kind == K_TRACEPARENT:  # only while tracing: replaced by the gateway's
                self.trace_id = value
            # K_DROP: hop-by-hop or replaced by the gateway
        if named:
            self.fwd = drop_named(self.fwd, named)
        return connection_field

    def target_from(self, url: bytes) -> None:
        """Split the request target into path and query; normalise the path (paths.py)."""
        if url[:1] == b"/":
            path, mark, query = url.partition(b"?")
            if not mark:
                query = None
        elif url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
            try:
                parsed = parse_url(url)
            except HttpParserInvalidURLError:
                parsed = None
            if parsed is None or not parsed.host:
                self.path = self.match_path = b"/"
                self.query = None
                self.refuse(400, "invalid request target")
                return
            path = parsed.path or b"/"
            query = parsed.query
            self.host = (
                parsed.host if parsed.port is None else b"%s:%d" % (parsed.host, parsed.port)
            )
        else:
            self.path = self.match_path = b"/"
            self.query = None
            if self.method == b"CONNECT":
                self.close_after = True  # the parser stops after CONNECT; nothing can follow
                self.refuse(405, "CONNECT is not supported")
            else:
                self.refuse(400, "invalid request target")
            return
        self.query = query
        # PERF: one regex search (3x faster than three `in` tests); most paths are clean.
        if NEEDS_NORMALISING(path) is None:
            self.path = self.match_path = path
            return
        try:
            self.match_path, self.path = normalise(path, self.runtime.encoded_slash)
        except PathError as exc:
            self.path = self.match_path = b"/"
            self.refuse(400, str(exc))

    def refuse(self, status: int, message: str) -> None:
        """Mark the request to be answered with an error when its turn comes (first one wins)."""
        if self.error is None:
            self.error = (status, message)
            if status in (400, 413, 414, 431):
                self.close_after = True

    # -- request side ------------------------------------------------------------------

    def start(self) -> None:
        """This exchange is now the one the client connection serves: route and dispatch."""
        if self.error is not None:
            self.local_error(*self.error)
            return
        router = self.runtime.router
        found = router.match(
            self.method,
            self.host or b"",
            self.match_path,
            self.header_pairs() if router.by_header else (),
        )
        if found is None:
            self.local_error(404, "no route matched the request")
            return
        if found.__class__ is Allow:
            self.local_error(405, "method not allowed", b"Allow: %s\r\n" % found.methods)
            return
        route = found.route
        if route.local is not None:
            answer = route.local(self)  # (status, content type, body[, extra header lines])
            if isawaitable(answer):  # an admin action that waits (POST /reload)
                self.client.loop.create_task(answer).add_done_callback(self.local_answered)
                return
            self.local_reply(answer[0], answer[2], answer[1], *answer[3:])
            return
        self.route = route
        self.depth = found.prefix_depth if route.strip_prefix else -1
        certified = self.client.peer_subjects
        if route.hooked or certified is not None:
            # Before any reply: the route's response and log hooks read these.
            self.consumer = self.subject = self.scopes = self.ctx = self.added = None
            self.address = UNSET
            self.logged = False
            runtime = self.runtime
            if runtime.observer is not None:  # the access log and metrics measure it
                self.received_at = self.client.loop.time()
                self.bytes_out = 0
                self.refused_by = None
            if runtime.tracing is not None:
                runtime.tracing.start(self, self.trace_id)
        if not self.body_done:
            self.max_body = route.max_body  # server.limits or the route's request-size-limit
            if self.content_length > route.max_body:
                self.close_after = True
                self.local_error(413, "request body too large")
                return
        if route.hooked or certified is not None:
            if certified is not None:
                self.certified(certified)
            if route.access:
                if self.run_access(0):
                    return
            elif certified is not None:
                self.add_identity()
        self.proceed()

    def local_answered(self, task: Any) -> None:
        """A local handler that waited has its answer (unless its client went away)."""
        if self.state == DONE:
            return
        if task.cancelled() or task.exception() is not None:
            log.error("admin handler failed", exc_info=task.exception())
            self.local_error(500, "internal error")
            return
        answer = task.result()
        self.local_reply(answer[0], answer[2], answer[1], *answer[3:])

    def proceed(self) -> None:
        """Every plugin let the request through: pick a host and send the request to it."""
        route = self.route
        cluster = route.cluster
        if cluster is None:  # only a split route has none
            cluster = route.split.choose(self)
        self.cluster = cluster
        budget = cluster.budget
        if budget is not None:
            budget.requests += 1  # the rate retries are budgeted against
        host = cluster.balancer.pick(self)
        if host is None:
            self.local_error(503, "no upstream target available")
            return
        if self.expect and self.body_bytes == 0:
            self.client.transport.write(CONTINUE)
        self.head = self.head_for(host)
        if route.mirror is None:
            self.dispatch(host)
        else:
            self.dispatch_mirrored(host)

    def dispatch_mirrored(self, host: Host) -> None:
        """Dispatch on a route with a mirror: a sampled request is also copied to the shadow,
        at once without a body, else once the whole body is here."""
        mirror = self.route.mirror
        if self.upgrade is not None or not mirror.sampled():  # a tunnel is not copied
            self.dispatch(host)
            return
        body = self.pending[:]  # the body that came so far (the head joins it in dispatch)
        self.dispatch(host)
        if self.body_done:
            self.send_copy(body)
        else:
            self.copy = body  # sent when the rest has come
            self.copy_fits()

    def copy_body(self, data: bytes) -> None:
        """Keep a body piece for the mirror, up to the shadow upstream's retry_buffer."""
        if self.copy_fits():
            if self.chunked:
                self.copy += chunk(data)
            else:
                self.copy.append(data)

    def copy_fits(self) -> bool:
        """Whether the body read so far fits in the shadow's retry_buffer; when it does not,
        the copy is dropped (and counted)."""
        mirror = self.route.mirror
        if self.body_bytes <= mirror.cluster.retry_buffer:
            return True
        self.copy = None
        mirror.drop("the request body is larger than its retry_buffer")
        return False

    def send_copy(self, body: list[bytes]) -> None:
        """The mirror's copy goes out; nothing that happens to it reaches the request."""
        try:
            if self.copy_fits():
                self.route.mirror.send(self, body)
        except Exception:
            log.exception("mirror error on route %s (the request goes on)", self.route.name)

    def head_for(self, host: Host) -> bytes:
        """The request head for the upstream, in one bytes object."""
        path = self.path if self.depth < 0 else strip_prefix(self.path, self.depth)
        if self.query is not None:
            path = path + b"?" + self.query
        if self.route.preserve_host and self.host:
            parts = [self.method, b" ", path, b" HTTP/1.1\r\nHost: ", self.host, b"\r\n"]
            parts += self.fwd
        else:
            parts = [self.method, b" ", path, host.host_line, *self.fwd]
        client = self.client
        if self.xff is None:
            parts.append(client.forwarded)  # PERF: built once per connection
        else:
            parts += (b"X-Forwarded-For: ", self.xff, b", ", client.peer, client.proto_line)
        if self.host is not None:
            parts += (
                b"X-Forwarded-Host: ",
                self.host,
                b"\r\nX-Request-ID: ",
                self.request_id,
                b"\r\n",
            )
        else:
            parts += (b"X-Request-ID: ", self.request_id, b"\r\n")
        if self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif self.content_length >= 0:
            parts.append(b"Content-Length: %d\r\n" % self.content_length)
        if self.upgrade is not None:
            parts += (b"Connection: upgrade\r\nUpgrade: ", self.upgrade, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def dispatch(self, host: Host) -> None:
        """Start an attempt on `host`: a pooled connection at once, or a dial."""
        self.upstream_host = host
        self.attempts += 1
        host.in_flight += 1  # PERF: inline; Host.attempt_ended takes it back
        self.live = True
        self.head_at = 0.0
        now = self.started_at = self.client.loop.time()
        conn = host.acquire()
        if conn is not None:
            self.connected_at = now
            self.attach(conn, now)
        else:
            self.connected_at = 0.0
            self.state = CONNECTING
            host.dial(self, self.cluster.connect_timeout)

    def attach(self, conn: UpstreamProtocol, now: float) -> None:
        client = self.client
        self.conn = conn
        self.state = SENDING
        conn.dispatch(self, now, self.cluster.read_timeout)
        if client.write_paused:
            conn.pause_reading(now)
        if self.sent is NOTHING_SENT:  # no body: the head alone, at once
            conn.transport.write(self.head)
        else:  # the head goes in front of the body, in the same write
            self.pending.insert(0, self.head)
            if not client.in_feed:
                self.flush()

    def flush(self) -> None:
        """Send what is pending to the attached upstream connection in one write."""
        pending = self.pending
        if not pending or self.conn is None:
            return
        self.pending = []
        conn = self.conn
        conn.transport.writelines(pending)
        sent = self.sent
        if sent is not None:
            sent += pending
        if self.pending_bytes:  # body bytes went out (not only the head)
            conn.sent(self.client.body_at)  # PERF: the time they arrived, read already
            if sent is not None:
                self.sent_bytes += self.pending_bytes
                if self.sent_bytes > self.cluster.retry_buffer:
                    self.sent = None
            if self.pending_bytes > BUFFER_LIMIT:
                self.client.resume_reading_for_buffer()
            self.pending_bytes = 0

    def request_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.discard or self.state == DONE:
            return
        if self.body_bytes > self.max_body:
            self.body_too_large()
            return
        if self.chunked:
            self.pending += chunk(data)
        else:
            self.pending.append(data)
        if self.copy is not None:
            self.copy_body(data)
        self.pending_bytes += len(data)
        if self.conn is None and self.pending_bytes > BUFFER_LIMIT:
            self.client.pause_reading_for_buffer()

    def request_trailer(self, name: bytes, value: bytes) -> None:
        trailers = getattr(self, "trailers", None)
        if trailers is None:
            trailers = self.trailers = []
        trailers.append((name, value))

    def request_complete(self) -> None:
        if self.body_done:
            return  # PERF: no body, nothing to finish
        self.body_done = True
        if self.discard or self.state == DONE:
            if self.discard:
                self.client.exchange_finished(self, self.client.loop.time())
            return
        if self.chunked:
            self.pending.append(last_chunk(getattr(self, "trailers", None)))
        copy = self.copy
        if copy is not None:
            self.copy = None
            if self.chunked:
                copy.append(self.pending[-1])
            self.send_copy(copy)

    def body_too_large(self) -> None:
        self.close_after = True
        if self.state == RESPONDING:
            self.client_failed()
            return
        self.drop_upstream()
        self.local_error(413, "request body too large")

    def body_timed_out(self) -> None:
        """No body byte came for `timeouts.client_body`: 408, or a reset once answering."""
        self.close_after = True
        if self.state >= RESPONDING:
            self.client_failed()
            return
        self.drop_upstream()
        self.local_error(408, "request body timeout")

    def waiting_on_client(self) -> bool:
        """The request is not all sent and nothing is left to send: the client is slow."""
        conn = self.conn
        return (
            not self.body_done
            and not self.pending
            and (conn is None or not conn.transport.get_write_buffer_size())
        )

    # -- flow control between the two connections ---------------------------------------

    def upstream_write_paused(self) -> None:
        self.client.pause_reading_for_peer()

    def upstream_write_resumed(self) -> None:
        self.client.resume_reading_for_peer()

    def client_write_paused(self, now: float) -> None:
        """The client's write buffer is full: stop reading the response meanwhile."""
        if self.conn is not None:
            self.conn.pause_reading(now)

    def client_write_resumed(self, now: float) -> None:
        if self.conn is not None:
            self.conn.resume_reading(now)

    # -- attempts ------------------------------------------------------------------------

    def end_attempt(self, outcome: str, now: float, conn: UpstreamProtocol | None = None) -> None:
        """Report the attempt in progress to its host, once (the completion point), for every
        end but a clean response, which response_end reports itself with its connection.
        `conn`, given for an answer dropped for a retry, is closed there (its parser still has
        the status, which health checks and metrics read)."""
        if not self.live:
            return
        self.live = False
        span = getattr(self, "span", None)  # a sampled request's trace, while exporting
        if span is not None:
            status = self.status if self.head_at else 0
            span.attempt_ended(
                self, outcome, now, conn.parser.get_status_code() if conn else status
            )
        started = self.started_at
        head_at = self.head_at
        self.upstream_host.attempt_ended(
            outcome,
            (self.connected_at or now) - started,
            head_at - started if head_at else -1.0,
            now - started,
            now,
            conn,
        )

    def retried(self, now: float) -> bool:
        """A response head the upstream's `retry_on` names: when the request may go again
        (replayable, retries and budget left, a target to go to), drop this response and
        send the request again."""
        cluster = self.cluster
        if self.sent is None or not cluster.may_retry(self.method, self.attempts, now):
            return False
        following = self.next_host(True)
        if following is None:
            return False
        conn = self.conn
        self.conn = None
        conn.exchange = None  # the rest of this response is not read
        log.info(
            "upstream %s: answered %d (route %s): retrying",
            self.upstream_host.label,
            conn.parser.get_status_code(),
            self.route.name,
        )
        self.head_at = now
        self.end_attempt(OK, now, conn)
        self.resend(following)
        return True

    def next_host(self, same_allowed: bool) -> Host | None:
        """The target of the next attempt: another than those tried (or, if `same_allowed`
        and there is no other, any)."""
        tried = getattr(self, "tried", None)
        if tried is None:
            tried = self.tried = []
        tried.append(self.upstream_host)
        balancer = self.cluster.balancer
        following = balancer.pick(self, tried)
        if following is None and same_allowed:
            following = balancer.pick(self)
        return following

    def resend(self, host: Host) -> None:
        """A new attempt on `host` with what was sent so far (the head, the body read)."""
        sent = self.sent
        if sent:  # the head first, then the body sent so far: the body goes again
            self.pending = sent[1:] + self.pending
            self.pending_bytes += self.sent_bytes
            self.sent = []
            self.sent_bytes = 0
        self.client.resume_reading_for_peer()  # the old connection's back-pressure is gone
        span = getattr(self, "span", None)
        if span is not None:
            span.retrying(self)  # a new client span: the head carries its traceparent
            self.head = self.head_for(host)
        elif host is not self.upstream_host and (not self.route.preserve_host or self.host is None):
            self.head = self.head_for(host)
        counter = self.cluster.metrics
        if counter is not None:
            counter.view[counter.base] += 1  # fastgw_upstream_retries_total
        self.dispatch(host)

    def connected(self, host: Host, conn: UpstreamProtocol) -> None:
        now = self.client.loop.time()
        if self.state != CONNECTING or host is not self.upstream_host:
            host.release(conn, now)  # fresh and unused: keep it
            return
        self.connected_at = now
        self.attach(conn, now)

    def connect_failed(self, host: Host, why: str, detail: str) -> None:
        if self.state != CONNECTING or host is not self.upstream_host:
            return
        route = self.route
        if why == DIAL_NO_DESCRIPTORS:
            self.end_attempt(GATEWAY_ERROR, self.client.loop.time())
            out_of_descriptors.error(
                "connect to upstream %s: %s (open file limit %d): answered 503; raise the "
                "limit (LimitNOFILE, ulimit -n) or lower limits.max_connections",
                host.label,
                detail,
                open_file_limit(),
            )
            self.local_error(*describe_dial_failure(why))
            return
        self.end_attempt(CONNECT_ERROR, self.client.loop.time())
        log.warning("upstream %s: connect %s (route %s): %s", host.label, why, route.name, detail)
        # Nothing reached the upstream: always retried (within `retries`), on another target.
        following = self.next_host(False) if self.attempts <= self.cluster.retries else None
        if following is None:
            self.local_error(*describe_dial_failure(why))
            return
        self.resend(following)

    def upstream_failed(self, conn: UpstreamProtocol, outcome: str, now: float) -> None:
        """The connection failed before the response ended: replay, or answer 502/504."""
        self.conn = None
        state = self.state
        if state == DONE:
            return
        if state == RESPONDING:
            log.warning(
                "upstream %s: %s during the response (route %s)",
                self.upstream_host.label,
                outcome,
                self.route.name,
            )
            self.end_attempt(outcome, now)
            self.state = DONE
            self.client.abort()
            return
        sent = self.sent
        if (
            outcome == RESET
            and conn.reused
            and conn.received == 0
            and sent is not None
            and not getattr(self, "replayed", False)
        ):
            # A pooled connection the upstream had closed: the same attempt goes on, once, on
            # a fresh connection, with everything sent so far (attach puts the head back).
            self.replayed = True
            if sent:
                self.pending = sent[1:] + self.pending
                self.pending_bytes += self.sent_bytes
                self.sent = []
                self.sent_bytes = 0
            self.state = CONNECTING
            self.connected_at = 0.0
            self.upstream_host.dial(self, self.cluster.connect_timeout)
            return
        log.warning(
            "upstream %s: %s (route %s)", self.upstream_host.label, outcome, self.route.name
        )
        self.end_attempt(outcome, now)
        cluster = self.cluster
        if (
            outcome in cluster.retry_outcomes
            and sent is not None
            and cluster.may_retry(self.method, self.attempts, now)
        ):
            following = self.next_host(True)
            if following is not None:
                self.resend(following)
                return
        self.close_after = self.close_after or not self.body_done
        if outcome == TIMEOUT:
            self.local_error(504, "upstream timed out")
        elif outcome == INVALID:
            self.local_error(502, "invalid response from upstream")
        else:
            self.local_error(502, "upstream closed the connection")

    def drop_upstream(self) -> None:
        """The client ended the exchange: the attempt in progress ends with it."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.abort()
        if self.upstream_host is not None and self.live:
            self.end_attempt(CLIENT_ABORT, self.client.loop.time())

    def client_failed(self) -> None:
        """Nothing more can be sent to this client: reset it (the upstream goes with it)."""
        self.drop_upstream()
        self.state = DONE
        self.client.abort()

    def client_gone(self) -> None:
        self.drop_upstream()
        if self.state < RESPONDING:
            self.status = 0  # not answered: the access log says 499
        self.state = DONE
        self.report_end(self.client.loop.time())

    def report_end(self, now: float) -> None:
        """The exchange is over: the route's log hooks (the access log and metrics among
        them), or, for one that never had a route, the runtime's observers."""
        route = self.route
        if route is not None:
            if route.log:
                self.run_log()
        elif self.runtime.observer is not None:  # not routed (404, 400...)
            self.runtime.observer.finished(self, now)

    # -- the response seam ---------------------------------------------------------------

    def response_head(self, status: int, fields: list[bytes], framing: int, now: float) -> bool:
        """The upstream's response head (hop-by-hop fields already out): build the client's,
        after the route's response hooks. True when no body follows (a response to HEAD)."""
        if status >= 500 and status in self.cluster.retry_statuses and self.retried(now):
            return False
        self.state = RESPONDING
        self.sent = None
        self.status = status
        self.head_at = now
        route = self.route
        if route.response:
            self.run_response_hooks(status, fields)
        if route.fields:
            added = self.added  # PERF: the lines plugins decided on the request side, no hook
            if added is not None:
                fields.append(added)
        if status == 101:
            fields.append(b"Connection: upgrade\r\n")
            self.body_mode = BODY_NONE
        else:
            if self.is_head or status == 204 or status == 304:
                self.body_mode = BODY_NONE
            elif framing == FRAMED_BY_LENGTH and not route.reframe:
                self.body_mode = BODY_RAW
            else:
                if self.http11:
                    fields.append(b"Transfer-Encoding: chunked\r\n")
                    self.body_mode = BODY_CHUNKED
                else:
                    self.body_mode = BODY_RAW
                    self.close_after = True  # an HTTP/1.0 client: the body ends at close
            if self.close_after:
                fields.append(b"Connection: close\r\n")
            elif not self.http11:
                fields.append(b"Connection: keep-alive\r\n")
        fields.append(b"\r\n")
        self.out = [STATUS_LINES[status] + b"".join(fields)]
        return self.is_head

    def response_body(self, data: bytes) -> None:
        if self.route.body:
            data = self.run_body_hooks(data, False)
            if not data:
                return
        if self.runtime.observer is not None:
            self.bytes_out += len(data)
        if self.body_mode == BODY_RAW:
            self.out.append(data)
        elif self.body_mode == BODY_CHUNKED:
            self.out += chunk(data)

    def response_read(self) -> None:
        """The end of one read from the upstream: what it produced goes out in one write."""
        if self.state != RESPONDING:
            return  # the head is not complete yet
        out = self.out
        if out:
            self.out = []
            self.client.transport.writelines(out)

    def response_end(
        self,
        conn: UpstreamProtocol,
        reusable: bool,
        trailers: list[tuple[bytes, bytes]] | None,
        now: float,
    ) -> None:
        """The response ended cleanly: send the rest, end the attempt, finish the exchange."""
        out = self.out
        if self.route.body and self.body_mode != BODY_NONE:
            self.response_tail()
            if self.state == DONE:  # a body hook failed: the client was reset
                conn.transport.close()
                return
        if self.body_mode == BODY_CHUNKED:
            out.append(last_chunk(trailers))
        client = self.client
        if out:
            client.transport.writelines(out)
        self.conn = None
        self.state = DONE
        # PERF: the completion point inline (end_attempt does the same for every other end).
        self.live = False
        started = self.started_at
        self.upstream_host.attempt_ended(
            OK,
            self.connected_at - started,
            self.head_at - started,
            now - started,
            now,
            conn,
            reusable and self.body_done and not self.pending,
        )
        client.exchange_finished(self, now)

    def tunnel_started(self, conn: UpstreamProtocol, rest: bytes) -> None:
        """After a 101: the two connections become a byte tunnel until either closes."""
        client = self.client
        self.response_read()  # the 101 head
        self.state = DONE
        conn.start_tunnel(client.transport)
        client.start_tunnel(conn.transport)
        if rest:
            client.transport.write(rest)

    def tunnel_ended(self, now: float) -> None:
        self.end_attempt(OK, now)
        if self.route.log:
            self.run_log()

    # -- plugins -----------------------------------------------------------------------

    def run_access(self, position: int) -> bool:
        """Run the route's request hooks from `position`; True when the request must not go
        on now (a plugin answered it, or one is waiting for I/O and will resume it)."""
        hooks = self.route.access
        index = position
        try:
            # PERF: a counted loop, no range object (most routes have one or two hooks).
            while index < len(hooks):
                outcome = hooks[index](self)
                index += 1
                if outcome is None:
                    continue
                if outcome.__class__ is Reply:
                    self.answer(outcome, hooks[index - 1])
                else:
                    # Only a plugin that waits returns an awaitable: a Future it resolves from a
                    # callback costs nothing more; a coroutine costs the one Task it needs.
                    if not isfuture(outcome):
                        outcome = self.client.loop.create_task(outcome)
                    outcome.add_done_callback(partial(self.resumed, index))
                return True
        except Exception:
            log.exception("plugin error on route %s", self.route.name)
            self.local_error(500, "internal error")
            return True
        # PERF: most requests on hooked routes carry no identity (a rate limit, CORS alone).
        if self.consumer is not None or self.subject is not None or self.scopes is not None:
            self.add_identity()
        return False

    def resumed(self, position: int, task: Any) -> None:
        """A plugin's I/O finished: answer, or carry on with the next hook."""
        if self.state == DONE or task.cancelled():
            return  # the client went away (or the request was answered) meanwhile
        error = task.exception()
        if error is not None:
            log.error("plugin error on route %s", self.route.name, exc_info=error)
            self.local_error(500, "internal error")
            return
        outcome = task.result()
        if outcome is not None:
            self.answer(outcome, self.route.access[position - 1])
        elif not self.run_access(position):
            self.proceed()

    def answer(self, outcome: Reply, hook: Any) -> None:
        """A plugin's reply; the precise reason goes to the log, never to the client."""
        if outcome.status in (401, 403):
            plugin = getattr(hook, "__self__", None)  # for fastgw_auth_failures_total
            self.refused_by = plugin.name if plugin is not None else None
        if outcome.reason:
            log.info(
                "%d on route %s for request %s: %s",
                outcome.status,
                self.route.name,
                self.request_id.decode("latin-1"),
                outcome.reason,
            )
        if outcome.body is None:
            self.local_error(outcome.status, outcome.message, outcome.extra)
        else:
            self.local_reply(outcome.status, outcome.body, outcome.content_type, outcome.extra)

    def run_response_hooks(self, status: int, head: list[bytes]) -> None:
        """The route's response hooks, in reverse plugin order; a failing one is skipped."""
        for hook in self.route.response:
            try:
                hook(self, status, head)
            except Exception:
                log.exception("plugin error in a response hook on route %s", self.route.name)

    def run_body_hooks(self, data: bytes, last: bool) -> bytes:
        """The route's body hooks in turn; a failing one leaves a response that cannot be
        completed correctly, so the client connection is reset."""
        try:
            for hook in self.route.body:
                data = hook(self, data, last)
        except Exception:
            log.exception("plugin error in a body hook on route %s", self.route.name)
            self.client_failed()
            return b""
        return data

    def response_tail(self) -> None:
        """What the body hooks still hold at the end of the body."""
        data = self.run_body_hooks(b"", True)
        if data:
            if self.runtime.observer is not None:
                self.bytes_out += len(data)
            if self.body_mode == BODY_RAW:
                self.out.append(data)
            else:
                self.out += chunk(data)

    def run_log(self) -> None:
        if not self.logged:
            self.logged = True
            for hook in self.route.log:
                try:
                    hook(self)
                except Exception:
                    log.exception("plugin error while logging on route %s", self.route.name)

    # -- local replies -----------------------------------------------------------------

    def local_error(self, status: int, message: str, extra: bytes = b"") -> None:
        self.local_reply(
            status, error_body(status, message, self.request_id), b"application/json", extra
        )

    def local_reply(
        self, status: int, body: bytes, content_type: bytes, extra: bytes = b""
    ) -> None:
        discard = False
        if not self.body_done and not self.close_after:
            if self.expect or self.state != WAITING:
                self.close_after = True
            else:
                discard = self.discard = True  # read and drop the body, keep the connection
        client = self.client
        route = self.route
        request_id = self.request_id
        self.status = status
        self.bytes_out = 0 if self.is_head else len(body)
        if route is not None and (route.response or route.fields):
            # The route's response hooks see the gateway's own replies too (e.g. CORS on a 401).
            head = [b"X-Request-ID", b": ", request_id, b"\r\n"]
            self.run_response_hooks(status, head)
            if route.fields and self.added is not None:
                head.append(self.added)
            extra = b"".join(head) + extra
            request_id = b""
        client.transport.write(
            reply(
                status,
                body,
                content_type=content_type,
                close=self.close_after,
                keep_alive_10=not self.http11,
                request_id=request_id,
                extra=extra,
                head_only=self.is_head,
            )
        )
        self.state = DONE
        self.pending = []
        if not discard:
            client.exchange_finished(self, client.loop.time())
