"""Traffic split: a route's upstream chosen per request by weight (canary, blue/green).

Each side owns a range of `[0, total weight)`, in config order; a request falls at a random
point, or, with `sticky`, at a point given by a hash of its key (a header, the client address,
the consumer), so a client stays on its side, and a weight change moves only the clients
whose point changes owner. With `sticky: cookie:NAME` the cookie names the side itself: a
client without it (or naming a side that left or has weight 0) is placed at random and gets
the cookie with the response. A reload with new weights builds a new splitter; requests in
flight keep the cluster they were given.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from random import random
from typing import Any


class Splitter:
    __slots__ = ("bounds", "by_name", "clusters", "cookie", "key", "total")

    def __init__(
        self,
        sides: list[tuple[Any, int]],
        key: Any = None,
        cookie: bytes | None = None,
    ) -> None:
        """`sides`: (cluster, weight) in config order; `key` reads a request's sticky key
        (None when it has none); `cookie`: the name of the cookie that `key` reads."""
        live = [(cluster, weight) for cluster, weight in sides if weight > 0]
        self.clusters = [cluster for cluster, _ in live]
        bounds, total = [], 0
        for _, weight in live:
            total += weight
            bounds.append(total)
        self.bounds = bounds[:-1]  # bisect over the inner edges finds the side's index
        self.total = total
        self.key = key
        self.cookie = cookie
        self.by_name = {cluster.name.encode(): cluster for cluster in self.clusters}

    def choose(self, ex: Any) -> Any:
        """The cluster of this request (before it is dispatched, after the plugins)."""
        key = self.key(ex) if self.key is not None else None
        if self.cookie is not None:
            chosen = self.by_name.get(key) if key is not None else None
            if chosen is None:
                chosen = self.at(random() * self.total)
                ex.add_response_fields(
                    b"Set-Cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax\r\n"
                    % (self.cookie, chosen.name.encode())
                )
            return chosen
        if key is None:
            return self.at(random() * self.total)
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return self.at(int.from_bytes(digest, "big") % self.total)

    def at(self, point: float) -> Any:
        return self.clusters[bisect_right(self.bounds, point)]
