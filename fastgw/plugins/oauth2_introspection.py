"""oauth2-introspection: opaque bearer tokens checked against an RFC 7662 endpoint.

Answers are remembered until the token's `exp`, never longer than `cache_ttl`; concurrent
requests with the same token share one call. `active: false` is 401, a missing scope 403,
and an endpoint that cannot answer 503 (the precise cause is logged).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from ..config.fields import duration, list_of, optional, spec, string
from ..outbound import OutboundError, fetch
from ..tls import client_context
from .base import UNSAFE, Build, Phase, Plugin, Reply
from .flight import SingleFlight, TtlCache
from .jwt_auth import bearer_token, http_url, token_scopes


@dataclass(frozen=True)
class IntrospectionConfig:
    endpoint: str = spec(http_url)
    client_id: str = spec(string(hint="the gateway's client id at the endpoint"))
    client_secret: str = spec(string(hint="the gateway's client secret"))
    cache_ttl: float = spec(duration, 60.0)
    required_scopes: tuple[str, ...] = spec(list_of(string(hint="a scope")), ())
    timeout: float = spec(duration, 5.0)
    ca: str | None = spec(optional(string(hint="a CA bundle file")), None)


class Introspected:
    """What an active token stands for: the identity headers, and how long to trust it."""

    __slots__ = ("identity", "scopes", "subject", "until")

    def __init__(self, identity: Any, subject: bytes | None, scopes: list[str], until: float):
        self.identity = identity
        self.subject = subject
        self.scopes = scopes
        self.until = until


INACTIVE: Any = object()


class OAuth2Introspection(Plugin):
    name = "oauth2-introspection"
    phase = Phase.AUTHENTICATION
    Config = IntrospectionConfig

    def __init__(self, config: IntrospectionConfig, build: Build) -> None:
        super().__init__(config, build)
        self.loop = build.services.loop
        self.authorization = build.watch("authorization")
        self.by_subject = build.consumers.by_jwt_subject
        self.scopes = frozenset(config.required_scopes)
        self.tls = (
            client_context(config.ca, True) if config.endpoint.startswith("https://") else None
        )
        credentials = f"{quote(config.client_id)}:{quote(config.client_secret)}".encode()
        self.client_auth = "Basic " + base64.b64encode(credentials).decode()
        self.answers = TtlCache()
        self.flight = SingleFlight(self.loop)
        challenge = b'WWW-Authenticate: Bearer realm="fastgw"'
        self.missing = Reply(401, "authentication required", extra=challenge + b"\r\n")
        self.invalid = Reply(401, "invalid token", extra=challenge + b', error="invalid_token"\r\n')
        self.insufficient = Reply(403, "insufficient scope")
        self.unavailable = Reply(503, "the token introspection endpoint is unavailable")

    def on_request(self, ex):
        token = bearer_token(ex.header(self.authorization))
        if token is None:
            return self.missing.because("oauth2-introspection: no bearer token")
        answer = self.answers.get(token, self.loop.time())
        if answer is not None:
            return self.admit(ex, answer)
        return self.introspect_then_admit(ex, token)

    async def introspect_then_admit(self, ex, token: bytes) -> Reply | None:
        try:
            answer = await self.flight.run(token, lambda: self.introspect_and_remember(token))
        except (OutboundError, ValueError) as exc:
            return self.unavailable.because(f"oauth2-introspection: {exc}")
        if answer is INACTIVE:
            return self.invalid.because("oauth2-introspection: the token is not active")
        return self.admit(ex, answer)

    async def introspect_and_remember(self, token: bytes) -> Any:
        """Cached inside the shared call, so no request slips between the call and the cache."""
        answer = await self.introspect(token)
        if answer is not INACTIVE:
            self.answers.put(token, answer, answer.until)
        return answer

    def admit(self, ex, answer: Introspected) -> Reply | None:
        if self.scopes and not self.scopes.issubset(answer.scopes):
            return self.insufficient.because(
                f"oauth2-introspection: missing scope(s) {sorted(self.scopes - set(answer.scopes))}"
            )
        scopes = " ".join(answer.scopes).encode() if answer.scopes else None
        ex.authenticated(answer.identity, answer.subject, scopes)
        return None

    async def introspect(self, token: bytes) -> Any:
        """One RFC 7662 call: INACTIVE, or what the token stands for."""
        config = self.config
        status, body = await fetch(
            config.endpoint,
            method="POST",
            body=urlencode({"token": token, "token_type_hint": "access_token"}).encode(),
            headers=[
                ("Authorization", self.client_auth),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Accept", "application/json"),
            ],
            timeout=config.timeout,
            tls=self.tls,
        )
        if status != 200:
            raise ValueError(f"the endpoint answered {status}")
        try:
            claims = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("the endpoint answered no JSON") from None
        if not isinstance(claims, dict):
            raise ValueError("the endpoint answered no JSON object")
        if claims.get("active") is not True:
            return INACTIVE
        now = time.time()
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and exp <= now:
            return INACTIVE
        subject = claims.get("sub", claims.get("username"))
        subject_bytes = str(subject).encode() if subject is not None else None
        scopes = token_scopes(claims)
        if any(not UNSAFE.isdisjoint(v) for v in (subject_bytes or b"", " ".join(scopes).encode())):
            return INACTIVE
        lifetime = config.cache_ttl
        if isinstance(exp, (int, float)):
            lifetime = min(lifetime, exp - now)
        identity = self.by_subject.get(subject) if isinstance(subject, str) else None
        return Introspected(identity, subject_bytes, scopes, self.loop.time() + lifetime)
