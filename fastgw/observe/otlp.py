"""Export of finished spans over OTLP/HTTP (protobuf), off the event loop.

Spans come from the loop as plain tuples (observe/tracing.py) and wait in a list; every
`FLUSH` seconds, or as soon as `BATCH` are waiting, they are handed as one batch to an export
thread, which encodes them with the OpenTelemetry protobuf classes (`opentelemetry-proto`, the
`fastgw[otel]` extra) and POSTs them to the collector on a kept-alive connection with a
bounded wait. Spans handed over and not yet sent never exceed `MAX_QUEUE`: beyond, new spans
are dropped and counted (`dropped`), so a collector that is down or slow costs spans, never
memory or a request's time. A batch the collector refuses or that cannot be sent is dropped
(counted) too; there is no retry, the next batch tries again.

Why not the OpenTelemetry SDK: its tracer creates a Python Span object with a lock and a
context token per span and runs its own processors; the gateway already knows each span's
ids, times and attributes when the request ends, so it only needs the wire format.
"""

from __future__ import annotations

import http.client
import logging
import ssl
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..logs import Throttled
from .handoff import STOP, Handoff

log = logging.getLogger("fastgw.tracing")
failures = Throttled(log, 10.0)

FLUSH = 1.0  # seconds a span may wait before it is handed to the export thread
BATCH = 512  # spans handed over at once, without waiting for the timer
MAX_QUEUE = 2048  # spans handed over and not yet sent: beyond, spans are dropped
TIMEOUT = 5.0  # seconds one export may take (connect, send, answer)

# A span as the loop hands it over: (trace id, span id, parent span id or None (all as hex
# bytes), kind, name, start and end in Unix nanoseconds, attributes, error type or None).
SERVER = 2  # SpanKind values of the OTLP protocol
CLIENT = 3
SpanRecord = tuple[bytes, bytes, bytes | None, int, str, int, int, tuple, str | None]


def available() -> bool:
    """Whether the protobuf classes of the OTLP protocol can be imported here."""
    try:
        import opentelemetry.proto.collector.trace.v1.trace_service_pb2  # noqa: F401
    except ImportError:
        return False
    return True


class OtlpExporter(Handoff):
    """One worker's exporter to one collector endpoint."""

    def __init__(self, loop: Any, endpoint: str, service_name: str) -> None:
        self.endpoint = endpoint
        self.service_name = service_name
        self.dropped_there = 0  # spans the collector did not take (export thread)
        self.exported = 0  # spans the collector accepted (export thread)
        super().__init__(loop, "fastgw-otlp", FLUSH, BATCH, MAX_QUEUE)

    @property
    def dropped(self) -> int:
        return self.dropped_here + self.dropped_there

    def add(self, spans: list[SpanRecord]) -> None:
        """A request's spans (its server span and one client span per attempt)."""
        if not self.gather(spans, len(spans)):
            self.dropped_here += len(spans)
            failures.warning(
                "tracing: the collector at %s is not keeping up; spans dropped", self.endpoint
            )

    def batched(self, items: list[list[SpanRecord]], size: int) -> list[SpanRecord]:
        return [span for spans in items for span in spans]

    # -- the export thread -------------------------------------------------------------

    def run(self) -> None:
        sender = Sender(self.endpoint)
        encode = Encoder(self.service_name).encode
        while True:
            spans = self.queue.get()
            if spans is STOP:
                sender.close()
                return
            try:
                sent = sender.post(encode(spans))
            except Exception as exc:  # an encoding bug must not end the thread
                log.exception("tracing: cannot export %d spans: %s", len(spans), exc)
                sent = False
            if sent:
                self.exported += len(spans)
            else:
                self.dropped_there += len(spans)
            self.done += len(spans)


class Sender:
    """POSTs of encoded batches to the collector on one kept-alive connection."""

    def __init__(self, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        self.endpoint = endpoint
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path or "/v1/traces"
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> bool:
        """True when the collector took the batch (2xx)."""
        try:
            if self.connection is None:
                if self.tls is not None:
                    self.connection = http.client.HTTPSConnection(
                        self.host, self.port, timeout=TIMEOUT, context=self.tls
                    )
                else:
                    self.connection = http.client.HTTPConnection(
                        self.host, self.port, timeout=TIMEOUT
                    )
            self.connection.request(
                "POST",
                self.path,
                body,
                {"Content-Type": "application/x-protobuf", "User-Agent": f"fastgw/{__version__}"},
            )
            answer = self.connection.getresponse()
            answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            failures.warning("tracing: cannot reach the collector at %s: %s", self.endpoint, exc)
            return False
        if not 200 <= answer.status < 300:
            failures.warning(
                "tracing: the collector at %s answered %d; spans dropped",
                self.endpoint,
                answer.status,
            )
            return False
        return True

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class Encoder:
    """Batches of span tuples to an ExportTraceServiceRequest (OTLP protobuf)."""

    def __init__(self, service_name: str) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2

        self.request = trace_service_pb2.ExportTraceServiceRequest
        self.trace = trace_pb2
        self.common = common_pb2
        self.resource = resource_pb2.Resource(
            attributes=self.attributes(
                (("service.name", service_name), ("service.version", __version__))
            )
        )
        self.scope = common_pb2.InstrumentationScope(name="fastgw", version=__version__)
        self.error = trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR)

    def attributes(self, pairs: tuple) -> list[Any]:
        made = []
        for key, value in pairs:
            if isinstance(value, bool):
                any_value = self.common.AnyValue(bool_value=value)
            elif isinstance(value, int):
                any_value = self.common.AnyValue(int_value=value)
            else:
                any_value = self.common.AnyValue(string_value=value)
            made.append(self.common.KeyValue(key=key, value=any_value))
        return made

    def encode(self, spans: list[SpanRecord]) -> bytes:
        made = []
        for trace_id, span_id, parent_id, kind, name, start, end, attributes, error in spans:
            span = self.trace.Span(
                trace_id=bytes.fromhex(trace_id.decode()),
                span_id=bytes.fromhex(span_id.decode()),
                name=name,
                kind=kind,
                start_time_unix_nano=start,
                end_time_unix_nano=end,
                attributes=self.attributes(attributes),
            )
            if parent_id is not None:
                span.parent_span_id = bytes.fromhex(parent_id.decode())
            if error is not None:
                span.status.CopyFrom(self.error)
                span.attributes.append(
                    self.common.KeyValue(
                        key="error.type", value=self.common.AnyValue(string_value=error)
                    )
                )
            made.append(span)
        request = self.request(
            resource_spans=[
                self.trace.ResourceSpans(
                    resource=self.resource,
                    scope_spans=[self.trace.ScopeSpans(scope=self.scope, spans=made)],
                )
            ]
        )
        return request.SerializeToString()
