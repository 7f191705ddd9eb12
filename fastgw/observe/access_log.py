"""The access log: one JSON object per request, built after its response, off the hot path.

Keys with no value are left out. `client` is the address `ip-restriction` sees (the peer, or
behind trusted proxies the forwarded one); `path` has no query string unless `log_query`;
`bytes_in` and `bytes_out` count body bytes (Envoy's BYTES_RECEIVED and BYTES_SENT);
`duration_ms` runs from the request's turn on its connection (its head parsed, the requests
before it answered) to the end of the response (0 for requests answered before routing: a
404, a 400), `upstream_ms` over the last attempt. Sampling keeps `sample` of the requests answered below 400; every request
answered 400 or above (errors, 429s) and every one slower than `slow_ms` is logged.
"""

from __future__ import annotations

import time
from random import random
from typing import Any

import orjson

from ..http.addresses import real_client
from .appender import Appender

CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before the answer


class AccessLog:
    __slots__ = (
        "appender",
        "log_query",
        "millisecond",
        "sample",
        "second",
        "slow",
        "stamp",
        "time",
        "trusted",
        "user_agent",
    )

    def __init__(
        self, settings: Any, appender: Appender, user_agent: int, trusted: bool = False
    ) -> None:
        """`user_agent`: the header kind under which requests carry User-Agent; `trusted`:
        whether the config trusts proxies (then `client` is read from X-Forwarded-For)."""
        self.appender = appender
        self.sample = settings.sample
        self.slow = settings.slow_ms / 1000.0 if settings.slow_ms else float("inf")
        self.log_query = settings.log_query
        self.user_agent = user_agent
        self.second = -1  # the wall-clock second `stamp` was formatted for
        self.stamp = ""  # that second, RFC 3339 without the fraction
        self.millisecond = -1  # the wall-clock millisecond `time` was formatted for
        self.time = ""
        self.trusted = trusted

    def finished(self, ex: Any, now: float) -> None:
        """The exchange ended (answered, or its client went away): log it, maybe."""
        status = ex.status or CLIENT_CLOSED
        # Routed exchanges are timed from their turn; the others were answered at once.
        duration = now - ex.received_at if ex.route is not None else 0.0
        if status < 400 and duration < self.slow and self.sample < 1.0 and random() >= self.sample:
            return
        self.appender.add(self.line(ex, status, duration, now))

    def logged(self, ex: Any) -> None:
        """The log hook of every route."""
        self.finished(ex, ex.client.loop.time())

    def line(self, ex: Any, status: int, duration: float, now: float) -> bytes:
        path = ex.path
        if self.log_query and ex.query is not None:
            path = path + b"?" + ex.query
        # PERF: the time is formatted once per millisecond, its seconds once per second.
        millisecond = int(time.time() * 1000)
        if millisecond != self.millisecond:
            self.millisecond = millisecond
            second = millisecond // 1000
            if second != self.second:
                self.second = second
                self.stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.time = self.stamp + MILLISECONDS[millisecond % 1000]
        time_ = self.time
        client = ex.client
        if ex.xff is None or not self.trusted:
            address = client.peer.decode("latin-1")  # PERF: the peer, as text already
        else:
            found = real_client(client.address(), ex.xff, ex.runtime.trusted)
            address = str(found) if found is not None else None
        method = METHOD_TEXT.get(ex.method) or ex.method.decode("latin-1")
        route = ex.route
        host = ex.upstream_host
        if host is not None and route is not None:
            # PERF: the common case as one dict display (no key inserted one by one).
            entry: dict[str, Any] = {
                "time": time_,
                "request_id": ex.request_id.decode("latin-1"),
                "client": address,
                "method": method,
                "path": path.decode("latin-1"),
                "status": status,
                "route": route.name,
                "upstream": host.upstream,
                "target": host.label,
                "bytes_in": ex.body_bytes,
                "bytes_out": ex.bytes_out,
                # PERF: milliseconds to the microsecond by integer division, not round().
                "duration_ms": int(duration * 1e6) / 1000,
                "upstream_ms": int((now - ex.started_at) * 1e6) / 1000,
                "attempts": ex.attempts,
            }
        else:
            entry = {
                "time": time_,
                "request_id": ex.request_id.decode("latin-1"),
                "client": address,
                "method": method,
                "path": path.decode("latin-1"),
                "status": status,
            }
            if route is not None:
                entry["route"] = route.name
            entry["bytes_in"] = ex.body_bytes
            entry["bytes_out"] = ex.bytes_out
            entry["duration_ms"] = int(duration * 1e6) / 1000
            if status == 429:
                entry["rate_limited"] = True
        if ex.trace_id is not None and route is not None:
            entry["trace_id"] = ex.trace_id.decode("latin-1")
        consumer = getattr(ex, "consumer", None)  # set on routed exchanges only
        if consumer is not None:
            entry["consumer"] = consumer.name
        agent = ex.header(self.user_agent)
        if agent is not None:
            entry["user_agent"] = agent.decode("latin-1")
        return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)


METHOD_TEXT = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
# ".000Z" to ".999Z": the milliseconds of `time` without formatting a number per line.
MILLISECONDS = [f".{ms:03d}Z" for ms in range(1000)]
