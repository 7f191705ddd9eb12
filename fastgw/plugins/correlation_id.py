"""correlation-id: echo the request id (X-Request-ID) on every response to the client.

The gateway already forwards it upstream (the client's own, or one it generated); this makes
it visible to the caller too, so a client report can be matched with the logs.
"""

from __future__ import annotations

from ..http.headers import drop_named
from .base import Phase, Plugin

_NAME = {b"x-request-id"}


class CorrelationId(Plugin):
    name = "correlation-id"
    phase = Phase.TRANSFORMATION

    def on_response(self, ex, status: int, head: list[bytes]) -> None:
        head[:] = drop_named(head, _NAME)  # an upstream's own copy, or the gateway's reply's
        head += (b"X-Request-ID", b": ", ex.request_id, b"\r\n")
