"""key-auth: an API key from a header or a query parameter identifies the consumer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from ..config.fields import boolean, optional, spec, string
from .base import Build, Phase, Plugin, Reply, readable_header


@dataclass(frozen=True)
class KeyAuthConfig:
    header: str | None = spec(optional(readable_header), "apikey")
    query: str | None = spec(
        optional(string(pattern=r"[^&=#\s]+", hint="a query parameter name")), "apikey"
    )
    hide_credentials: bool = spec(boolean, False)


class KeyAuth(Plugin):
    name = "key-auth"
    phase = Phase.AUTHENTICATION
    Config = KeyAuthConfig

    def __init__(self, config: KeyAuthConfig, build: Build) -> None:
        super().__init__(config, build)
        self.consumers = build.consumers
        self.header = build.watch(config.header) if config.header else None
        self.header_name = config.header.lower().encode() if config.header else b""
        self.query = (
            re.compile(rb"(?:^|&)" + re.escape(config.query.encode()) + rb"=([^&]*)")
            if config.query
            else None
        )
        self.hide = config.hide_credentials
        challenge = b'WWW-Authenticate: Key realm="fastgw"\r\n'
        self.missing = Reply(401, "no API key found in the request", extra=challenge)
        self.invalid = Reply(401, "invalid authentication credentials", extra=challenge)

    def on_request(self, ex) -> Reply | None:
        key = ex.header(self.header) if self.header is not None else None
        found_in_query = None
        if key is None and self.query is not None and ex.query is not None:
            found_in_query = self.query.search(ex.query)
            if found_in_query is not None:
                key = unquote_to_bytes(found_in_query[1])
        if not key:
            return self.missing.because("no key in the request")
        identity = self.consumers.by_api_key(key)
        if identity is None:
            return self.invalid.because("unknown API key")
        if self.hide:
            if found_in_query is not None:
                start, end = found_in_query.span()
                query = ex.query
                ex.query = (query[:start] + query[end:]).lstrip(b"&") or None
            else:
                ex.remove_header(self.header_name)
        ex.authenticated(identity)
        return None
