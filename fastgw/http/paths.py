"""Request path normalisation, so that routing, plugins and the upstream see the same path.

`/public/../admin`, `/%61dmin` and `/admin;x=1/secret` must not slip past the plugins of an
`/admin/*` route into a catch-all whose upstream resolves them to `/admin/...`. As nginx does
before matching: percent-encoded unreserved characters (RFC 3986 2.3) are decoded and the hex
of the other escapes upper-cased; `.` and `..` segments are resolved after decoding (also with
`;parameters`); repeated slashes are merged. A segment's `;parameters` do not take part in
matching (`/admin;x=1` matches `/admin`) but are forwarded. An encoded slash or backslash
(`%2F`, `%5C`) is refused, decoded, or kept as one segment, by `server.paths.encoded_slash`.
"""

from __future__ import annotations

import re

# PERF: one regex search decides; most paths have none of these. Single-byte alternatives, not
# a class `[%;]`: the class costs ~30 % more per search here (timeit).
NEEDS_NORMALISING = re.compile(rb"/\.|//|%|;").search

REJECT, DECODE, KEEP = "reject", "decode", "keep"

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_SLASHES = (0x2F, 0x5C)


class PathError(ValueError):
    """The path cannot be normalised; the message is the client's."""


def _decode_escapes(path: bytes, encoded_slash: str) -> bytes:
    if path.count(b"%") != len(_ESCAPE.findall(path)):
        raise PathError("invalid percent-encoding in path")

    def escape(match: re.Match[bytes]) -> bytes:
        code = int(match.group(1), 16)
        if code in _UNRESERVED:
            return bytes((code,))
        if code in _SLASHES:
            if encoded_slash == REJECT:
                raise PathError("encoded slash or backslash in path")
            if encoded_slash == DECODE:
                return bytes((code,))
        return b"%%%02X" % code

    return _ESCAPE.sub(escape, path)


def normalise(path: bytes, encoded_slash: str = REJECT) -> tuple[bytes, bytes]:
    """(path to match, path to forward) of a path starting with `/`; raises PathError.

    The two differ only by the `;parameters` of segments, which the forwarded path keeps.
    """
    if b"%" in path:
        path = _decode_escapes(path, encoded_slash)
    matched: list[bytes] = []
    forwarded: list[bytes] = []
    segments = path.split(b"/")[1:]
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        name = segment.partition(b";")[0]
        if name == b".":
            if i == last:
                matched.append(b"")
                forwarded.append(b"")
        elif name == b"..":
            if not matched:
                raise PathError("path climbs above the root")
            matched.pop()
            forwarded.pop()
            if i == last:
                matched.append(b"")
                forwarded.append(b"")
        elif name or i == last:
            matched.append(name)
            forwarded.append(segment)
    forward = b"/" + b"/".join(forwarded)
    match = b"/" + b"/".join(matched)
    return (forward if match == forward else match), forward
