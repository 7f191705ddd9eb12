"""Replies the gateway writes itself: JSON errors and small local answers."""

from __future__ import annotations

import time
from email.utils import formatdate

import orjson

from .headers import STATUS_LINES

_date_cache: list = [0, b""]


def http_date() -> bytes:
    """The current `Date` value, formatted at most once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode()
    return _date_cache[1]


def reply(
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    close: bool = False,
    keep_alive_10: bool = False,
    request_id: bytes = b"",
    extra: bytes = b"",
    head_only: bool = False,
) -> bytes:
    """A complete response (head and body) as one bytes object, for one write."""
    head = [STATUS_LINES[status], b"Date: ", http_date(), b"\r\nServer: fastgw\r\n"]
    if status != 204 and status != 304:  # RFC 9110 §8.6: no length (nor body) on these
        head += (b"Content-Type: ", content_type, b"\r\nContent-Length: %d\r\n" % len(body))
    if request_id:
        head += (b"X-Request-ID: ", request_id, b"\r\n")
    if close:
        head.append(b"Connection: close\r\n")
    elif keep_alive_10:
        head.append(b"Connection: keep-alive\r\n")
    head += (extra, b"\r\n")
    if not head_only:
        head.append(body)
    return b"".join(head)


def error_body(status: int, message: str, request_id: bytes) -> bytes:
    return orjson.dumps(
        {"error": message, "status": status, "request_id": request_id.decode("latin-1")}
    )


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
