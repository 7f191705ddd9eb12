"""An OTLP/HTTP traces receiver for tests: a real HTTP server on loopback that decodes each
POST with the OpenTelemetry protobuf classes (what a collector does first) and keeps the
spans as plain dicts. `answer` sets the status it replies with."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def value_of(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


class Collector:
    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.posts: list[dict] = []  # path, content type, resource and scope of each POST
        self.answer = 200
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                collector.received(self.path, self.headers["Content-Type"], request)
                self.send_response(collector.answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self, path: str, content_type: str, request: Any) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.posts.append(
                        {
                            "path": path,
                            "content_type": content_type,
                            "resource": resource,
                            "scope": scope_spans.scope.name,
                        }
                    )
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_id": span.parent_span_id.hex() or None,
                                "name": span.name,
                                "kind": span.kind,
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                                "error": span.status.code == 2,
                                "attributes": {a.key: value_of(a.value) for a in span.attributes},
                            }
                        )

    def taken(self) -> list[dict]:
        with self.lock:
            return list(self.spans)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
