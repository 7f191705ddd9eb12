"""Request path normalisation, so that routing and the upstream see the same path.

`/public/../admin` must not match `/public/*` and then reach `/admin` upstream: dot segments
(also as `%2e`) are resolved and repeated slashes merged, as nginx does before matching.
"""

from __future__ import annotations

import re

# Dot segments (also `%2e`), repeated slashes, encoded characters worth a look.
NEEDS_NORMALISING = re.compile(rb"/\.|//|%2").search


def normalise(path: bytes) -> bytes | None:
    """The normalised path, or None when `..` climbs above the root."""
    decoded = path.replace(b"%2e", b".").replace(b"%2E", b".")
    out: list[bytes] = []
    segments = decoded.split(b"/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == b".":
            if last:
                out.append(b"")
        elif segment == b"..":
            if not out:
                return None
            out.pop()
            if last:
                out.append(b"")
        elif segment or last:
            out.append(segment)
    return b"/" + b"/".join(out)
