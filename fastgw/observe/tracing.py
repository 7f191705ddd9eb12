"""W3C trace context (traceparent, tracestate): continued when the client's is valid, started
when it is absent or invalid, and always forwarded upstream with the gateway's own span id
as the new parent.

Only with a `tracing:` section: then the client's `traceparent` is not forwarded as it came
(the exchange reads it as a field of its own kind) and the gateway's replaces it; without the
section trace headers pass through untouched and cost nothing. One span id per request: the
gateway's span, parent of whatever the upstream does.

With `otlp_endpoint`, a sampled request (the flag of its traceparent: the client's, or
`sample_ratio` for a trace the gateway starts) is also recorded: a server span for the request
and a client span per upstream attempt, whose id is the parent the upstream sees; a retry gets
a new client span and a new traceparent. Its spans go to the exporter (otlp.py) when the
request ends. Requests that are not sampled only carry the header, as without export.
"""

from __future__ import annotations

import re
import time
from random import getrandbits, random
from typing import Any

from ..router import strip_prefix
from .otlp import CLIENT, SERVER, OtlpExporter, SpanRecord

# version 00 (or a later one, read as 00), 32 hex trace id, 16 hex parent id, 2 hex flags
TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
ZERO_TRACE = b"0" * 32
ZERO_SPAN = b"0" * 16
SPAN_BITS = (1 << 64) - 1


class Tracing:
    """A config load's tracing settings, applied to each exchange of a routed request."""

    __slots__ = ("exporter", "response_header", "sample_ratio", "user_agent")

    def __init__(
        self, settings: Any, exporter: OtlpExporter | None = None, user_agent: int = 0
    ) -> None:
        """`exporter`: where sampled requests' spans go (None: propagation only);
        `user_agent`: the header kind under which requests carry User-Agent."""
        self.response_header = settings.response_header
        self.sample_ratio = settings.sample_ratio
        self.exporter = exporter
        self.user_agent = user_agent

    def start(self, ex: Any, incoming: bytes | None) -> None:
        """Give the exchange its trace: `ex.trace_id`, and a `traceparent` line for the
        upstream (and the client, with `response_header`)."""
        trace_id = flags = parent_id = None
        if incoming is not None:
            found = TRACEPARENT.fullmatch(incoming.strip().lower())
            if (
                found is not None
                and found[1] != b"ff"
                and (found[1] != b"00" or found.end() == len(incoming.strip()))
                and found[2] != ZERO_TRACE
                and found[3] != ZERO_SPAN
            ):
                trace_id, parent_id, flags = found[2], found[3], found[4]
        # PERF: ids from the process's PRNG (seeded per worker by os.urandom), no system call
        # per request; trace ids need to be unique, not secret.
        if trace_id is None:
            # PERF: the trace id and the span id from one draw, formatted once.
            bits = getrandbits(192)
            while not (bits >> 64 and bits & SPAN_BITS):  # neither may be all zeros
                bits = getrandbits(192)
            ids = b"%048x" % bits
            trace_id, span_id = ids[:32], ids[32:]
            flags = b"01" if random() < self.sample_ratio else b"00"
            if incoming is not None:
                ex.remove_header(b"tracestate")  # it belonged to the trace that was dropped
        else:
            span_id = b"%016x" % (getrandbits(64) or 1)
        line = b"traceparent: 00-%s-%s-%s\r\n" % (trace_id, span_id, flags)
        ex.trace_id = trace_id
        if self.exporter is not None:
            if int(flags, 16) & 1:  # sampled: recorded, and the upstream's parent is an attempt
                span = ex.span = Span(trace_id, span_id, parent_id, flags, ex.client.loop.time())
                ex.fwd.append(span.line)
            else:
                ex.span = None
                ex.fwd.append(line)
        else:
            ex.fwd.append(line)
        if self.response_header:
            ex.add_response_fields(line)

    def finished(self, ex: Any) -> None:
        """The log hook of every route while exporting: a sampled request's spans go out."""
        span = ex.span
        if span is not None:
            self.exporter.add(span.records(ex, ex.client.loop.time(), self.user_agent))


class Span:
    """A sampled request's server span while it runs, and the attempts that ended so far."""

    __slots__ = (
        "attempts",
        "client_id",
        "flags",
        "line",
        "parent_id",
        "span_id",
        "start",
        "trace_id",
    )

    def __init__(
        self, trace_id: bytes, span_id: bytes, parent_id: bytes | None, flags: bytes, start: float
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.flags = flags
        self.start = start
        self.attempts: list[tuple[bytes, Any, float, float, str, int]] = []
        self.client_id = self.line = b""
        self.next_attempt()

    def next_attempt(self) -> bytes:
        """A new client span id for the next attempt; the traceparent line it sends."""
        self.client_id = b"%016x" % (getrandbits(64) or 1)
        self.line = b"traceparent: 00-%s-%s-%s\r\n" % (self.trace_id, self.client_id, self.flags)
        return self.line

    def retrying(self, ex: Any) -> None:
        """The exchange sends its request again: the new attempt's traceparent replaces the
        last one among the forwarded fields."""
        old = self.line
        fwd = ex.fwd
        fwd[fwd.index(old)] = self.next_attempt()

    def attempt_ended(self, ex: Any, outcome: str, now: float, status: int) -> None:
        self.attempts.append(
            (self.client_id, ex.upstream_host, ex.started_at, now, outcome, status)
        )

    def records(self, ex: Any, now: float, user_agent: int) -> list[SpanRecord]:
        """The request's spans, for the exporter: the server span, then each attempt's."""
        if len(self.attempts) < ex.attempts and not ex.live:  # the last one ended cleanly
            self.attempt_ended(ex, "ok", now, ex.status)
        # Loop time to Unix time, once per request.
        offset = time.time_ns() - int(now * 1e9)
        method = ex.method.decode("latin-1")
        status = ex.status
        attributes: list[tuple[str, Any]] = [
            ("http.request.method", method),
            ("url.path", ex.path.decode("latin-1")),
            ("url.scheme", "https" if ex.client.site.tls is not None else "http"),
            ("network.protocol.version", "1.1" if ex.http11 else "1.0"),
            ("client.address", ex.client.peer.decode("latin-1")),
            ("fastgw.route", ex.route.name),
            ("fastgw.request_id", ex.request_id.decode("latin-1")),
        ]
        if ex.host:
            attributes.append(("server.address", host_name(ex.host)))
        if status:
            attributes.append(("http.response.status_code", status))
        agent = ex.header(user_agent)
        if agent is not None:
            attributes.append(("user_agent.original", agent.decode("latin-1")))
        consumer = getattr(ex, "consumer", None)
        if consumer is not None:
            attributes.append(("fastgw.consumer", consumer.name))
        made: list[SpanRecord] = [
            (
                self.trace_id,
                self.span_id,
                self.parent_id,
                SERVER,
                f"{method} {ex.route.name}",
                int(self.start * 1e9) + offset,
                int(now * 1e9) + offset,
                tuple(attributes),
                str(status) if status >= 500 else None,
            )
        ]
        path = ex.path if ex.depth < 0 else strip_prefix(ex.path, ex.depth)
        for tries, (span_id, host, start, end, outcome, got) in enumerate(self.attempts):
            scheme = "https" if host.tls is not None else "http"
            authority = f"[{host.address}]" if ":" in host.address else host.address
            client: list[tuple[str, Any]] = [
                ("http.request.method", method),
                ("server.address", host.address),
                ("server.port", host.port),
                ("url.full", f"{scheme}://{authority}:{host.port}{path.decode('latin-1')}"),
                ("fastgw.upstream", host.upstream),
                ("fastgw.outcome", outcome),
            ]
            if got:
                client.append(("http.response.status_code", got))
            if tries:
                client.append(("http.request.resend_count", tries))
            error = outcome if outcome != "ok" else str(got) if got >= 500 else None
            made.append(
                (
                    self.trace_id,
                    span_id,
                    self.span_id,
                    CLIENT,
                    method,
                    int(start * 1e9) + offset,
                    int(end * 1e9) + offset,
                    tuple(client),
                    error,
                )
            )
        return made


def host_name(host: bytes) -> str:
    """The name in a Host field, without its port."""
    if host[:1] == b"[":
        return host[1 : host.find(b"]")].decode("latin-1")
    return host.partition(b":")[0].decode("latin-1")
