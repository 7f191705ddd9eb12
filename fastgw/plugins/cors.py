"""cors: answers preflight requests itself and adds the CORS headers for allowed origins.

Origins are exact (`https://app.example.com`), wildcard hosts (`https://*.example.com`, or
`*.example.com` for any scheme) or `*`. A preflight (`OPTIONS` with an `Origin` and an
`Access-Control-Request-Method`) is never forwarded: an allowed origin gets 204 with the allow
headers, any other 403. Other requests go on; only an allowed origin gets allow headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config.fields import boolean, duration, list_of, optional, spec, string
from ..http.headers import drop_named
from .base import Build, Phase, Plugin, Reply, shown

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_ORIGIN = r"\*|(?:[a-z][a-z0-9+.\-]*://)?(?:\*\.)?[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*(?::\d{1,5})?"

_OWN_FIELDS = {
    b"access-control-allow-origin",
    b"access-control-allow-credentials",
    b"access-control-expose-headers",
}


@dataclass(frozen=True)
class CorsConfig:
    origins: tuple[str, ...] = spec(
        list_of(
            string(
                pattern=_ORIGIN,
                hint="an origin such as 'https://app.example.com', '*.example.com' or '*'",
                lower=True,
            ),
            min_len=1,
        ),
        ("*",),
    )
    methods: tuple[str, ...] = spec(
        list_of(string(pattern=_TOKEN, hint="an HTTP method")),
        ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"),
    )
    headers: tuple[str, ...] | None = spec(
        optional(list_of(string(pattern=_TOKEN, hint="a header name"))), None
    )
    expose_headers: tuple[str, ...] = spec(
        list_of(string(pattern=_TOKEN, hint="a header name")), ()
    )
    credentials: bool = spec(boolean, False)
    max_age: float | None = spec(optional(duration), None)


def origin_pattern(origins: tuple[str, ...]) -> re.Pattern[bytes] | None:
    """One regex for all allowed origins; None when any origin is allowed."""
    if "*" in origins:
        return None
    alternatives = []
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if not sep:
            scheme, rest = "", origin
        host = re.escape(rest)
        if rest.startswith("*."):
            host = r"(?:[a-z0-9\-]+\.)+" + re.escape(rest[2:])
        alternatives.append((re.escape(scheme) if scheme else r"https?") + "://" + host)
    return re.compile(("(?:" + "|".join(alternatives) + ")").encode())


class Cors(Plugin):
    name = "cors"
    phase = Phase.PREFLIGHT
    Config = CorsConfig

    def __init__(self, config: CorsConfig, build: Build) -> None:
        super().__init__(config, build)
        self.origin = build.watch("origin")
        self.request_method = build.watch("access-control-request-method")
        self.request_headers = build.watch("access-control-request-headers")
        self.pattern = origin_pattern(config.origins)
        self.star = self.pattern is None and not config.credentials
        common = b""
        if config.credentials:
            common += b"Access-Control-Allow-Credentials: true\r\n"
        self.common = common
        self.expose = ", ".join(config.expose_headers).encode()
        preflight = b"Access-Control-Allow-Methods: " + ", ".join(config.methods).encode() + b"\r\n"
        if config.headers is not None:
            preflight += (
                b"Access-Control-Allow-Headers: " + ", ".join(config.headers).encode() + b"\r\n"
            )
        if config.max_age is not None:
            preflight += b"Access-Control-Max-Age: %d\r\n" % int(config.max_age)
        self.preflight = preflight
        self.reflect_headers = config.headers is None
        self.refused = Reply(403, "CORS origin not allowed")

    def allowed(self, origin: bytes) -> bool:
        return self.pattern is None or self.pattern.fullmatch(origin.lower()) is not None

    def allow_origin(self, origin: bytes) -> bytes:
        return b"*" if self.star else origin

    def is_preflight(self, ex) -> bool:
        return ex.method == b"OPTIONS" and ex.header(self.request_method) is not None

    def on_request(self, ex) -> Reply | None:
        origin = ex.header(self.origin)
        if origin is None or not self.is_preflight(ex):
            return None
        if not self.allowed(origin):
            return self.refused.because(f"cors: preflight from origin {shown(origin)}")
        extra = (
            b"Access-Control-Allow-Origin: "
            + self.allow_origin(origin)
            + b"\r\nVary: Origin\r\n"
            + self.common
            + self.preflight
        )
        if self.reflect_headers:
            requested = ex.header(self.request_headers)
            if requested is not None:
                extra += b"Access-Control-Allow-Headers: " + requested + b"\r\n"
        return Reply(204, body=b"", extra=extra)

    def on_response(self, ex, status: int, head: list[bytes]) -> None:
        origin = ex.header(self.origin)
        if origin is not None and self.is_preflight(ex):
            return  # the preflight reply carries its own headers
        head[:] = drop_named(head, _OWN_FIELDS)
        head += (b"Vary", b": ", b"Origin", b"\r\n")
        if origin is None or not self.allowed(origin):
            return
        head += (b"Access-Control-Allow-Origin", b": ", self.allow_origin(origin), b"\r\n")
        if self.common:
            head += (b"Access-Control-Allow-Credentials", b": ", b"true", b"\r\n")
        if self.expose:
            head += (b"Access-Control-Expose-Headers", b": ", self.expose, b"\r\n")
