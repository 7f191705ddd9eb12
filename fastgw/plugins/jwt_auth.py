"""jwt-auth: a signed JWT (pyjwt) authenticates the request; scopes and claims authorise it.

Keys come from exactly one of `jwks_url`, `jwks_file`, `public_key_file` or `secret`; the
`algorithms` allow-list is enforced (never `none`, never an HMAC with a public key). A token
verified once is remembered until it expires (bounded, cleared when the keys change), so a
client reusing its token costs a dict lookup and a clock read, not a signature check.

pyjwt and `cryptography` are imported on first use (~10 MiB per process that configs without
JWT, or TLS, do not pay).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config.fields import (
    INVALID,
    Errors,
    Parser,
    boolean,
    describe,
    duration,
    list_of,
    mapping_of,
    optional,
    spec,
    string,
)
from ..tls import client_context
from .base import UNSAFE, Build, Phase, Plugin, Reply, readable_header, shown
from .jwks import KeySet, RemoteKeySet, parse_jwks

HMAC = ("HS256", "HS384", "HS512")
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
CACHE_LIMIT = 10000


def algorithm(value: Any, path: str, errors: Errors) -> Any:
    if value in HMAC or value in ASYMMETRIC:
        return value
    return errors.add(
        path, f"unsupported algorithm {describe(value)} (supported: {', '.join(HMAC + ASYMMETRIC)})"
    )


def file_contents(convert: Callable[[bytes], Any]) -> Parser:
    """A file name, read at load; the setting is `convert(contents)`, whose ValueError is the
    message."""

    def parse(value: Any, path: str, errors: Errors) -> Any:
        if not isinstance(value, str):
            return errors.add(path, f"expected a file name, got {describe(value)}")
        try:
            with open(value, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            return errors.add(path, f"cannot read '{value}': {exc.strerror}")
        try:
            return convert(data)
        except ValueError as exc:
            return errors.add(path, f"'{value}' {exc}")

    return parse


def load_public_key(pem: bytes) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if b"CERTIFICATE" in pem:
        return x509.load_pem_x509_certificate(pem).public_key()
    return load_pem_public_key(pem)


def checked_pem(pem: bytes) -> bytes:
    """The PEM itself (workers load it), once it is known to hold a public key."""
    try:
        load_public_key(pem)
    except ValueError:
        raise ValueError("holds no PEM public key or certificate") from None
    return pem


def checked_jwks(data: bytes) -> dict:
    try:
        return parse_jwks(data)
    except ValueError as exc:
        raise ValueError(f"is {exc}") from None


public_key_file = file_contents(checked_pem)
jwks_file = file_contents(checked_jwks)


def token_source(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, str):
        kind, _, name = value.partition(":")
        name = name.strip()
        if kind == "header" and name:
            return INVALID if readable_header(name, path, errors) is INVALID else (kind, name)
        if kind == "header" or (kind in ("cookie", "query") and name):
            return (kind, name)
    return errors.add(
        path,
        f"expected 'header', 'header:NAME', 'cookie:NAME' or 'query:NAME', got {describe(value)}",
    )


def _audiences(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, str):
        return (value,)
    return list_of(string(hint="an audience"), min_len=1)(value, path, errors)


def http_url(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) > 8:
        return value
    return errors.add(path, f"expected an http:// or https:// URL, got {describe(value)}")


def _claim_value(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    return errors.add(path, f"expected a string, number or boolean, got {describe(value)}")


@dataclass(frozen=True)
class JwtAuthConfig:
    algorithms: tuple[str, ...] = spec(list_of(algorithm, min_len=1), ("RS256",))
    jwks_url: str | None = spec(optional(http_url), None)
    jwks_file: dict | None = spec(optional(jwks_file), None)
    public_key_file: bytes | None = spec(optional(public_key_file), None)
    secret: str | None = spec(optional(string(hint="a shared secret")), None)
    issuer: str | None = spec(optional(string(hint="an issuer")), None)
    audience: tuple[str, ...] | None = spec(optional(_audiences), None)
    leeway: float = spec(duration, 30.0)
    required_scopes: tuple[str, ...] = spec(list_of(string(hint="a scope")), ())
    required_claims: dict[str, Any] = spec(mapping_of(_claim_value), factory=dict)
    token_from: tuple[tuple[str, str], ...] = spec(
        list_of(token_source, min_len=1), (("header", ""),)
    )
    require_consumer: bool = spec(boolean, False)
    jwks_refresh: float = spec(duration, 300.0)
    jwks_min_refresh: float = spec(duration, 10.0)
    jwks_ca: str | None = spec(optional(string(hint="a CA bundle file")), None)


class JwtAuth(Plugin):
    name = "jwt-auth"
    phase = Phase.AUTHENTICATION
    Config = JwtAuthConfig

    @classmethod
    def check(cls, config: JwtAuthConfig, path: str, errors: Errors) -> None:
        sources = [
            name
            for name in ("jwks_url", "jwks_file", "public_key_file", "secret")
            if getattr(config, name) is not None
        ]
        if len(sources) != 1:
            errors.add(
                path,
                "expected exactly one key source: jwks_url, jwks_file, public_key_file or secret"
                + (f" (got {', '.join(sources)})" if sources else ""),
            )
            return
        for i, alg in enumerate(config.algorithms):
            hmac = alg in HMAC
            if hmac != (sources[0] == "secret"):
                errors.add(
                    f"{path}.algorithms[{i}]",
                    f"algorithm '{alg}' cannot be used with {sources[0]} "
                    + (
                        "(HMAC needs a secret)"
                        if hmac
                        else "(a secret only verifies HS256/384/512)"
                    ),
                )

    def __init__(self, config: JwtAuthConfig, build: Build) -> None:
        super().__init__(config, build)
        self.algorithms = list(config.algorithms)
        # (kind, what): "bearer" and "header" carry a watched header's kind id, "cookie" and
        # "query" the name to look for.
        self.sources = [
            ("bearer", build.watch("authorization"))
            if kind == "header" and not name
            else (kind, build.watch(name) if kind == "header" else name.encode())
            for kind, name in config.token_from
        ]
        self.cookie = build.watch("cookie") if any(k == "cookie" for k, _ in self.sources) else 0
        self.static_key: Any = None
        self.keys: KeySet | None = None
        if config.secret is not None:
            self.static_key = config.secret.encode()
        elif config.public_key_file is not None:
            self.static_key = load_public_key(config.public_key_file)
        elif config.jwks_file is not None:
            self.keys = KeySet(config.jwks_file)
        else:
            url = config.jwks_url
            tls = client_context(config.jwks_ca, True) if url.startswith("https://") else None
            self.keys = build.services.keep(
                ("jwks", url, config.jwks_ca),
                lambda: RemoteKeySet(
                    build.services.loop, url, config.jwks_refresh, config.jwks_min_refresh, tls
                ),
            )
        self.options = {
            "require": ["exp"],
            "verify_aud": config.audience is not None,
            "verify_iss": config.issuer is not None,
        }
        self.audience = list(config.audience) if config.audience else None
        self.scopes = frozenset(config.required_scopes)
        self.claims = config.required_claims
        self.by_subject = build.consumers.by_jwt_subject
        self.require_consumer = config.require_consumer
        self.leeway = config.leeway
        self.cache: dict[bytes, tuple[Any, float, float, int]] = {}
        challenge = b'WWW-Authenticate: Bearer realm="fastgw"\r\n'
        self.missing = Reply(401, "authentication required", extra=challenge)
        self.invalid = Reply(
            401,
            "invalid token",
            extra=b'WWW-Authenticate: Bearer realm="fastgw", error="invalid_token"\r\n',
        )
        self.insufficient = Reply(403, "insufficient scope or claims")
        self.unavailable = Reply(503, "the identity provider's keys are unavailable")

    # -- finding the token -------------------------------------------------------------------

    def token(self, ex) -> bytes | None:
        for kind, name in self.sources:
            if kind == "bearer":
                value = bearer_token(ex.header(name))
            elif kind == "header":
                value = ex.header(name)
            elif kind == "cookie":
                value = self.from_cookie(ex, name)
            else:
                value = ex.query_param(name)
            if value:
                return value
        return None

    def from_cookie(self, ex, name: bytes) -> bytes | None:
        for header in ex.header_values(self.cookie):
            for pair in header.split(b";"):
                key, sep, value = pair.strip().partition(b"=")
                if sep and key == name:
                    return value.strip(b'"')
        return None

    # -- verifying ---------------------------------------------------------------------------

    def on_request(self, ex):
        token = self.token(ex)
        if token is None:
            return self.missing.because("jwt-auth: no token in the request")
        keys = self.keys
        version = keys.version if keys is not None else 0
        cached = self.cache.get(token)
        if cached is not None and cached[3] == version:
            now = time.time()
            if cached[2] - self.leeway <= now < cached[1] + self.leeway:
                ex.authenticated(*cached[0])
                return None
            del self.cache[token]
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            return self.invalid.because(f"jwt-auth: malformed token: {exc}")
        alg = header.get("alg")
        if alg not in self.algorithms:
            return self.invalid.because(f"jwt-auth: algorithm {shown(alg)} is not allowed")
        if keys is None:
            return self.verify(ex, token, self.static_key, version)
        kid = header.get("kid")
        key = keys.lookup(kid, alg)
        if key is None and isinstance(keys, RemoteKeySet):
            return self.refresh_then_verify(ex, token, kid, alg)
        if key is None:
            return self.invalid.because(f"jwt-auth: no key for kid {shown(kid)} and {alg}")
        return self.verify(ex, token, key, version)

    async def refresh_then_verify(self, ex, token: bytes, kid: str | None, alg: str):
        keys = self.keys
        loaded = await keys.refresh()
        key = keys.lookup(kid, alg)
        if key is None:
            if not loaded:
                return self.unavailable.because(f"jwt-auth: JWKS {keys.url} could not be loaded")
            return self.invalid.because(f"jwt-auth: no key for kid {shown(kid)} and {alg}")
        return self.verify(ex, token, key, keys.version)

    def verify(self, ex, token: bytes, key: Any, version: int) -> Reply | None:
        import jwt

        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                options=self.options,
                audience=self.audience,
                issuer=self.config.issuer,
                leeway=self.leeway,
            )
        except jwt.PyJWTError as exc:
            return self.invalid.because(f"jwt-auth: {exc.__class__.__name__}: {exc}")
        subject = claims.get("sub")
        subject_bytes = str(subject).encode() if subject is not None else None
        scopes = token_scopes(claims)
        scope_bytes = " ".join(scopes).encode() if scopes else None
        if any(
            value is not None and not UNSAFE.isdisjoint(value)
            for value in (subject_bytes, scope_bytes)
        ):
            return self.invalid.because("jwt-auth: control characters in sub or scope")
        if self.scopes and not self.scopes.issubset(scopes):
            return self.insufficient.because(
                f"jwt-auth: missing scope(s) {sorted(self.scopes - set(scopes))}"
            )
        for name, expected in self.claims.items():
            if not claim_matches(claims.get(name), expected):
                return self.insufficient.because(f"jwt-auth: claim {shown(name)} does not match")
        identity = self.by_subject.get(subject) if isinstance(subject, str) else None
        if identity is None and self.require_consumer:
            return self.invalid.because(f"jwt-auth: subject {shown(subject)} is no consumer")
        outcome = (identity, subject_bytes, scope_bytes)
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        self.cache[token] = (outcome, float(claims["exp"]), float(claims.get("nbf", 0)), version)
        ex.authenticated(*outcome)
        return None


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` value."""
    if authorization is None or authorization[:7].lower() != b"bearer ":
        return None
    return authorization[7:].strip() or None


def token_scopes(claims: dict) -> list[str]:
    """Scopes from `scope` (space-separated, RFC 8693) or `scp` (a list or a string)."""
    value = claims.get("scope", claims.get("scp"))
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def claim_matches(actual: Any, expected: Any) -> bool:
    """Equal, or, for a list claim (`aud`, `groups`), containing the expected value."""
    if isinstance(actual, list):
        return expected in actual
    return actual == expected
