"""Request keys: what a limit, a quota or a hash balancer counts or hashes a request by.

`consumer | ip | route | global | path | header:NAME | query:NAME | cookie:NAME`, or a list of
them (joined). Each key becomes one closure at load, so a request pays only for its parts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.fields import Errors, describe
from ..config.traffic import NAMED_KEY
from .base import Build

KEY_KINDS = ("consumer", "ip", "route", "global", "path")
MISSING = b"-"  # the key part of a request that lacks it: limited together, never let through
KEY_HINT = "consumer, ip, route, global, path, header:NAME, query:NAME or cookie:NAME"

Reader = Callable[[Any], Any]


def key_part(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, str) and (value in KEY_KINDS or NAMED_KEY.fullmatch(value)):
        return value
    return errors.add(path, f"expected a key: {KEY_HINT}, got {describe(value)}")


def key_reader(parts: tuple[str, ...], build: Build, missing: Any = MISSING) -> Reader:
    """The request's key, as bytes (a missing part reads as `missing`)."""
    readers = [part_reader(part, build, missing) for part in parts]
    if len(readers) == 1:
        return readers[0]
    return lambda ex: b"\0".join([read(ex) or MISSING for read in readers])


def part_reader(part: str, build: Build, missing: Any) -> Reader:
    if part == "consumer":
        return lambda ex: ex.consumer.name.encode() if ex.consumer is not None else missing
    if part == "ip":
        if not build.behind_proxies:
            return lambda ex: ex.client.peer  # PERF: the peer's address, as the socket gave it

        def ip(ex: Any) -> Any:
            address = ex.client_address()
            return address.packed if address is not None else missing

        return ip
    if part == "route":
        return lambda ex: ex.route.name.encode()
    if part == "global":
        return lambda ex: b""
    if part == "path":
        return lambda ex: ex.match_path
    kind, _, name = part.partition(":")
    if kind == "header":
        watched = build.watch(name)
        return lambda ex: ex.header(watched) or missing
    if kind == "cookie":
        cookies = build.watch("cookie")
        wanted = name.encode()
        return lambda ex: cookie(ex.header_values(cookies), wanted) or missing
    query = name.encode()
    return lambda ex: ex.query_param(query) or missing


def cookie(headers: list[bytes], name: bytes) -> bytes | None:
    """The value of cookie `name` in the request's Cookie fields (RFC 6265 pairs)."""
    for header in headers:
        for pair in header.split(b";"):
            key, sep, value = pair.strip().partition(b"=")
            if sep and key == name:
                return value.strip(b'"')
    return None
