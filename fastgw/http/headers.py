"""Header names and head serialisation helpers, all bytes."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

# RFC 9110 §7.6.1 hop-by-hop fields (connection, keep-alive, proxy-connection, te,
# transfer-encoding, upgrade) are never forwarded, nor those named in `Connection`; the
# gateway sets the framing and X-Forwarded-* fields itself.
# Request field kinds, looked up once per header by lower-cased name.
K_HOST, K_CONTENT_LENGTH, K_XFF, K_REQUEST_ID, K_CONNECTION, K_DROP, K_EXPECT, K_TE, K_UPGRADE = (
    range(9)
)
# Read by the gateway and replaced, only when tracing is on (observe/tracing.py).
K_TRACEPARENT = 9
REQUEST_KINDS: dict[bytes, int] = {
    b"host": K_HOST,
    b"content-length": K_CONTENT_LENGTH,
    b"x-forwarded-for": K_XFF,
    b"x-request-id": K_REQUEST_ID,
    b"connection": K_CONNECTION,
    b"keep-alive": K_DROP,
    b"proxy-connection": K_DROP,
    b"te": K_DROP,
    b"transfer-encoding": K_TE,
    b"upgrade": K_UPGRADE,
    b"x-forwarded-proto": K_DROP,
    b"x-forwarded-host": K_DROP,
    b"expect": K_EXPECT,
    # Identity fields are set only by the gateway's authentication: a client's are dropped.
    b"x-consumer-name": K_DROP,
    b"x-consumer-groups": K_DROP,
    b"x-auth-subject": K_DROP,
    b"x-auth-scopes": K_DROP,
}

# Response field kinds.
R_CONTENT_LENGTH, R_CONNECTION, R_DROP, R_TE, R_UPGRADE = range(5)
RESPONSE_KINDS: dict[bytes, int] = {
    b"content-length": R_CONTENT_LENGTH,
    b"connection": R_CONNECTION,
    b"keep-alive": R_DROP,
    b"proxy-connection": R_DROP,
    b"te": R_DROP,
    b"transfer-encoding": R_TE,
    b"upgrade": R_UPGRADE,
}

# PERF: field names usually arrive in one of two casings; a lookup by the name as sent skips
# `lower()` and a fresh hash. Names not listed fall back to the lower-cased table. UNLISTED is
# the lookup's default, compared with `is` (an `==` against None takes the slow generic path).
UNLISTED: Any = object()
COMMON_FIELDS = (
    b"accept",
    b"accept-encoding",
    b"accept-language",
    b"authorization",
    b"cache-control",
    b"content-type",
    b"cookie",
    b"date",
    b"etag",
    b"last-modified",
    b"location",
    b"origin",
    b"referer",
    b"server",
    b"set-cookie",
    b"user-agent",
    b"vary",
    b"x-real-ip",
)


def by_sent_name(kinds: dict[bytes, int]) -> dict[bytes, int | None]:
    """`kinds` plus the common fields, keyed by lower-case and by Title-Case names."""
    table: dict[bytes, int | None] = {}
    for name, kind in [*kinds.items(), *((f, None) for f in COMMON_FIELDS if f not in kinds)]:
        table[name] = kind
        table[b"-".join(part.capitalize() for part in name.split(b"-"))] = kind
    return table


RESPONSE_KINDS_SENT = by_sent_name(RESPONSE_KINDS)

# Tokens of a `Connection` header that name no other header.
CONNECTION_OPTIONS = frozenset((b"keep-alive", b"close", b"upgrade"))

REQUEST_ID_MAX = 200


def _phrase(code: int) -> bytes:
    try:
        return HTTPStatus(code).phrase.encode()
    except ValueError:
        return b""


# RFC 9110's reason phrases where they differ from (or are missing in) Python's table.
REASONS: dict[int, bytes] = {
    413: b"Content Too Large",
    414: b"URI Too Long",
    422: b"Unprocessable Content",
}


class _StatusLines(dict):
    """Status code -> status line; a code with no standard phrase gets an empty one."""

    def __missing__(self, code: int) -> bytes:
        return b"HTTP/1.1 %d \r\n" % code


# PERF: every status line the gateway writes, made once. Responses carry the standard reason
# phrase, not the upstream's (as Envoy does; RFC 9112 §4: clients ignore it).
STATUS_LINES: dict[int, bytes] = _StatusLines(
    (code, b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code) or _phrase(code)))
    for code in range(100, 600)
)


def connection_tokens(value: bytes) -> set[bytes]:
    """Lower-cased tokens of a `Connection` header value."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def drop_named(parts: list[bytes], names: set[bytes]) -> list[bytes]:
    """Remove the `name: value\\r\\n` groups (4 pieces each) whose name is in `names`."""
    kept: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].lower() not in names:
            kept.extend(parts[i : i + 4])
    return kept


def chunk(data: bytes) -> list[bytes]:
    """The pieces of one chunk of a chunked body."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def last_chunk(trailers: list[tuple[bytes, bytes]] | None) -> bytes:
    """The zero-size chunk that ends a chunked body, with trailer fields."""
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"
