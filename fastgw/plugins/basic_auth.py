"""basic-auth: `Authorization: Basic` checked against consumers' scrypt password hashes.

scrypt costs tens of milliseconds on purpose, so it runs in a thread, never on the event loop;
concurrent requests with the same credentials share one verification, and a verified
credential is remembered for `cache_ttl` so the hash is not paid per request.
"""

from __future__ import annotations

import binascii
import hashlib
import os
from dataclasses import dataclass

from ..config.fields import duration, spec, string
from .base import Build, Phase, Plugin, Reply, shown
from .consumers import Identity
from .flight import SingleFlight, TtlCache
from .passwords import DEFAULT_N, DEFAULT_P, DEFAULT_R, PasswordHash

# Unknown users are checked against this, so they take as long as known ones.
_DECOY = PasswordHash(DEFAULT_N, DEFAULT_R, DEFAULT_P, os.urandom(16), os.urandom(32))


@dataclass(frozen=True)
class BasicAuthConfig:
    realm: str = spec(string(pattern=r"[\x20-\x7e]*", hint="a realm without quotes"), "fastgw")
    cache_ttl: float = spec(duration, 30.0)


class BasicAuth(Plugin):
    name = "basic-auth"
    phase = Phase.AUTHENTICATION
    Config = BasicAuthConfig

    def __init__(self, config: BasicAuthConfig, build: Build) -> None:
        super().__init__(config, build)
        self.users = build.consumers.by_user
        self.loop = build.services.loop
        self.authorization = build.watch("authorization")
        self.ttl = config.cache_ttl
        self.verified = TtlCache()
        self.flight = SingleFlight(self.loop)
        realm = config.realm.replace('"', "").encode()
        challenge = b'WWW-Authenticate: Basic realm="' + realm + b'", charset="UTF-8"\r\n'
        self.missing = Reply(401, "authentication required", extra=challenge)
        self.invalid = Reply(401, "invalid authentication credentials", extra=challenge)

    def on_request(self, ex):
        value = ex.header(self.authorization)
        if value is None or value[:6].lower() != b"basic ":
            return self.missing.because("basic-auth: no Basic credentials")
        key = hashlib.sha256(value).digest()
        identity = self.verified.get(key, self.loop.time())
        if identity is not None:
            ex.authenticated(identity)
            return None
        try:
            decoded = binascii.a2b_base64(value[6:].strip(), strict_mode=True)
        except binascii.Error:
            decoded = b""
        user, sep, password = decoded.partition(b":")
        if not sep:
            return self.invalid.because("basic-auth: malformed credentials")
        return self.verify(ex, key, user, password)

    async def verify(self, ex, key: bytes, user: bytes, password: bytes) -> Reply | None:
        identity = await self.flight.run(key, lambda: self.verify_password(key, user, password))
        if identity is None:
            return self.invalid.because(f"basic-auth: wrong password or unknown user {shown(user)}")
        ex.authenticated(identity)
        return None

    async def verify_password(self, key: bytes, user: bytes, password: bytes) -> Identity | None:
        """scrypt in a worker thread (unknown users cost the same as known ones); a match is
        remembered inside the shared call, so no request slips between check and cache."""
        entry = self.users.get(user)
        hashed, identity = entry if entry is not None else (_DECOY, None)
        if not await self.loop.run_in_executor(None, hashed.matches, password):
            return None
        self.verified.put(key, identity, self.loop.time() + self.ttl)
        return identity
