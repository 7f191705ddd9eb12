"""W3C trace context (traceparent, tracestate): continued when the client's is valid, started
when it is absent or invalid, and always forwarded upstream with the gateway's own span id
as the new parent.

Only with a `tracing:` section: then the client's `traceparent` is not forwarded as it came
(the exchange reads it as a field of its own kind) and the gateway's replaces it; without the
section trace headers pass through untouched and cost nothing. One span id per request: the
gateway's span, parent of whatever the upstream does (export of spans is not built yet).
"""

from __future__ import annotations

import re
from random import getrandbits, random
from typing import Any

# version 00 (or a later one, read as 00), 32 hex trace id, 16 hex parent id, 2 hex flags
TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
ZERO_TRACE = b"0" * 32
ZERO_SPAN = b"0" * 16


class Tracing:
    """A config load's tracing settings, applied to each exchange of a routed request."""

    __slots__ = ("response_header", "sample_ratio")

    def __init__(self, settings: Any) -> None:
        self.response_header = settings.response_header
        self.sample_ratio = settings.sample_ratio

    def start(self, ex: Any, incoming: bytes | None) -> None:
        """Give the exchange its trace: `ex.trace_id`, and a `traceparent` line for the
        upstream (and the client, with `response_header`)."""
        trace_id = flags = None
        if incoming is not None:
            found = TRACEPARENT.fullmatch(incoming.strip().lower())
            if (
                found is not None
                and found[1] != b"ff"
                and (found[1] != b"00" or found.end() == len(incoming.strip()))
                and found[2] != ZERO_TRACE
                and found[3] != ZERO_SPAN
            ):
                trace_id, flags = found[2], found[4]
        if trace_id is None:
            trace_id = b"%032x" % (getrandbits(128) or 1)
            flags = b"01" if random() < self.sample_ratio else b"00"
            if incoming is not None:
                ex.remove_header(b"tracestate")  # it belonged to the trace that was dropped
        # PERF: ids from the process's PRNG (seeded per worker by os.urandom), no system call
        # per request; trace ids need to be unique, not secret.
        span_id = b"%016x" % (getrandbits(64) or 1)
        line = b"traceparent: 00-%s-%s-%s\r\n" % (trace_id, span_id, flags)
        ex.trace_id = trace_id
        ex.fwd.append(line)
        if self.response_header:
            ex.add_response_fields(line)
