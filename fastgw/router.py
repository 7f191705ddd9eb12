"""Route matching: an exact-path dict plus a segment radix tree, compiled once per config load.

Most specific wins: an exact path beats a `{param}` segment, which beats a `/*` wildcard; a
deeper wildcard beats a shallower one. Among routes on the same path shape, more constraints
(hosts, then headers, then methods) win; two that could match the same request with equal
constraints are a tie, reported at load. A request whose path matched only with the wrong
method gets 405 and the union of the allowed methods.

Lookup cost depends on the number of path segments, not on the number of routes.
"""

from __future__ import annotations

from typing import Any

# A `*` wildcard child and a `{param}` child sit beside the static children of a node.
_PARAM = "{}"


class Candidate:
    """One route reachable through one path pattern, with its non-path constraints."""

    __slots__ = (
        "exact_hosts",
        "has_constraints",
        "headers",
        "index",
        "methods",
        "pattern",
        "prefix_depth",
        "rank",
        "route",
        "wild_hosts",
    )

    def __init__(
        self,
        route: Any,
        index: int,
        pattern: str,
        methods: frozenset[bytes] | None,
        hosts: tuple[str, ...] | None,
        headers: dict[str, str] | None,
        prefix_depth: int,
    ) -> None:
        self.route = route
        self.index = index
        self.pattern = pattern
        self.methods = methods
        exact = frozenset(h.encode() for h in hosts or () if not h.startswith("*."))
        wild = tuple(h[1:].encode() for h in hosts or () if h.startswith("*."))
        self.exact_hosts = exact if hosts else None
        self.wild_hosts = wild
        self.headers = tuple((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())
        self.prefix_depth = prefix_depth
        host_rank = 0 if not hosts else (1 if wild else 2)
        self.rank = (host_rank, len(self.headers), methods is not None)
        self.has_constraints = hosts is not None or bool(self.headers)

    def accepts(self, host: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
        """Host and header constraints (the method is checked by the caller)."""
        if self.exact_hosts is not None:
            name = host_name(host)
            if name not in self.exact_hosts and not any(name.endswith(s) for s in self.wild_hosts):
                return False
        for want_name, want_value in self.headers:
            for name, value in headers:
                if value == want_value and name.lower() == want_name:
                    break
            else:
                return False
        return True

    def overlaps(self, other: Candidate) -> bool:
        """Could one request satisfy both candidates' constraints?"""
        if (
            self.methods is not None
            and other.methods is not None
            and not (self.methods & other.methods)
        ):
            return False
        if (
            self.exact_hosts is not None
            and other.exact_hosts is not None
            and not _hosts_overlap(self, other)
        ):
            return False
        mine = dict(self.headers)
        return all(mine.get(name, value) == value for name, value in other.headers)


def _hosts_overlap(a: Candidate, b: Candidate) -> bool:
    def covers(c: Candidate, host: bytes) -> bool:
        return host in (c.exact_hosts or ()) or any(host.endswith(s) for s in c.wild_hosts)

    if any(covers(b, h) for h in a.exact_hosts or ()) or any(
        covers(a, h) for h in b.exact_hosts or ()
    ):
        return True
    return any(x.endswith(y) or y.endswith(x) for x in a.wild_hosts for y in b.wild_hosts)


def host_name(host: bytes) -> bytes:
    """The lower-cased host of a Host header, without the port."""
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1].lower()
    colon = host.rfind(b":")
    return (host[:colon] if colon >= 0 else host).lower()


class Allow:
    """No route accepted the method; `methods` is the value of the `Allow` header."""

    __slots__ = ("methods",)

    def __init__(self, methods: set[bytes]) -> None:
        self.methods = b", ".join(sorted(methods))


class _Node:
    __slots__ = ("leaf", "param", "static", "wild")

    def __init__(self) -> None:
        self.static: dict[bytes, _Node] = {}
        self.param: _Node | None = None
        self.leaf: list[Candidate] | None = None  # a pattern ends exactly here
        self.wild: list[Candidate] | None = None  # a `/*` pattern whose prefix ends here


class Router:
    """Built with `add` for each (route, path), then `finish`; read-only afterwards."""

    def __init__(self) -> None:
        self.exact: dict[bytes, list[Candidate]] = {}
        self.root = _Node()
        self._groups: list[list[Candidate]] = []
        self.by_header = False  # some route matches on header values: match() needs them

    def add(
        self,
        route: Any,
        index: int,
        path: str,
        methods: tuple[str, ...] | None,
        hosts: tuple[str, ...] | None,
        headers: dict[str, str] | None,
    ) -> None:
        method_set = None
        if methods is not None:
            method_set = {m.upper().encode() for m in methods}
            if b"GET" in method_set:
                method_set.add(b"HEAD")  # as nginx does: a GET route answers HEAD too
            method_set = frozenset(method_set)
        wildcard = path.endswith("/*")
        body = path[:-2] if wildcard else path
        segments = body.split("/")[1:] if body else []
        depth = len(segments) if wildcard else -1
        candidate = Candidate(route, index, path, method_set, hosts, headers, depth)
        if not wildcard and "{" not in path:
            group = self.exact.setdefault(path.encode(), [])
        else:
            node = self.root
            for segment in segments:
                if segment.startswith("{"):
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node = node.static.setdefault(segment.encode(), _Node())
            if wildcard:
                if node.wild is None:
                    node.wild = []
                group = node.wild
            else:
                if node.leaf is None:
                    node.leaf = []
                group = node.leaf
        if not group:
            self._groups.append(group)
        group.append(candidate)

    def finish(self) -> list[tuple[int, str]]:
        """Order candidates most specific first; return ties as (route index, message)."""
        ties: list[tuple[int, str]] = []
        self.by_header = any(c.headers for group in self._groups for c in group)
        for group in self._groups:
            group.sort(key=lambda c: (c.rank, -c.index), reverse=True)
            for i, a in enumerate(group):
                for b in group[i + 1 :]:
                    if a.rank == b.rank and a.overlaps(b) and a.route is not b.route:
                        first, second = sorted((a, b), key=lambda c: c.index)
                        ties.append(
                            (
                                second.index,
                                f"ties with routes[{first.index}] on path '{second.pattern}': "
                                "both can match the same request with equally specific "
                                "hosts/headers/methods (make one more specific)",
                            )
                        )
        return ties

    def match(
        self, method: bytes, host: bytes, path: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Candidate | Allow | None:
        """The most specific candidate for the request, `Allow` for 405, or None for 404."""
        refused: list[frozenset[bytes]] = []  # methods of candidates that wanted another one
        group = self.exact.get(path)
        if group is not None:
            found = _pick(group, method, host, headers, refused)
            if found is not None:
                return found
        segments = path.split(b"/")
        # PERF: most requests follow one branch of the tree to a leaf: that branch is tried
        # without recursion; the depth-first walk (which backtracks into `{param}` children
        # and wildcards) runs only when it finds nothing.
        node = self.root
        for segment in segments[1:]:
            child = node.static.get(segment)
            if child is None:
                child = node.param if segment else None
                if child is None:
                    break
            node = child
        else:
            if node.leaf is not None:
                found = _pick(node.leaf, method, host, headers, refused)
                if found is not None:
                    return found
        found = _walk(self.root, segments, 1, method, host, headers, refused)
        if found is not None:
            return found
        return Allow(set().union(*refused)) if refused else None

    def describe(self) -> list[tuple[str, str, str, str]]:
        """(pattern, methods, hosts, route index) rows for `fastgw routes`, most specific first."""
        rows = []
        for group in sorted(self._groups, key=lambda g: specificity(g[0].pattern)):
            for c in group:
                methods = ",".join(sorted(m.decode() for m in c.methods)) if c.methods else "*"
                hosts = (
                    ",".join(sorted(h.decode() for h in c.exact_hosts or ()))
                    if c.exact_hosts is not None
                    else "*"
                )
                if c.wild_hosts:
                    hosts = ",".join(
                        filter(
                            None,
                            [
                                hosts if c.exact_hosts else "",
                                *("*" + w.decode() for w in c.wild_hosts),
                            ],
                        )
                    )
                rows.append((c.pattern, methods, hosts, str(c.index)))
        return rows


def specificity(pattern: str) -> list[int]:
    """A sort key that puts the paths that win first: segment by segment, a literal before a
    parameter before a wildcard (so `/api/users/{id}` before `/api/*`, and `/*` last)."""
    ranks = []
    for segment in pattern.strip("/").split("/"):
        if segment.endswith("*"):
            ranks.append(2)
        elif segment.startswith(("{", ":")):
            ranks.append(1)
        else:
            ranks.append(0)
    return ranks


def _pick(
    group: list[Candidate],
    method: bytes,
    host: bytes,
    headers: list[tuple[bytes, bytes]],
    refused: list[frozenset[bytes]],
) -> Candidate | None:
    """The first candidate of a group that accepts the request; else add the methods that
    would have been accepted to `refused` (for the 405's `Allow`)."""
    for c in group:
        if c.has_constraints and not c.accepts(host, headers):
            continue
        if c.methods is None or method in c.methods:
            return c
        refused.append(c.methods)
    return None


def _walk(
    node: _Node,
    segments: list[bytes],
    i: int,
    method: bytes,
    host: bytes,
    headers: list[tuple[bytes, bytes]],
    refused: list[frozenset[bytes]],
) -> Candidate | None:
    """Depth first: the static child, then the parameter child, then this node's wildcard."""
    if i == len(segments):
        if node.leaf is not None:
            found = _pick(node.leaf, method, host, headers, refused)
            if found is not None:
                return found
    else:
        segment = segments[i]
        child = node.static.get(segment)
        if child is not None:
            found = _walk(child, segments, i + 1, method, host, headers, refused)
            if found is not None:
                return found
        if node.param is not None and segment:
            found = _walk(node.param, segments, i + 1, method, host, headers, refused)
            if found is not None:
                return found
    if node.wild is not None:
        return _pick(node.wild, method, host, headers, refused)
    return None


def strip_prefix(path: bytes, depth: int) -> bytes:
    """Remove the first `depth` segments matched by a wildcard's prefix; '/' if nothing is left."""
    if depth <= 0:
        return path
    pos = 0
    for _ in range(depth):
        pos = path.find(b"/", pos + 1)
        if pos < 0:
            return b"/"
    return path[pos:]
