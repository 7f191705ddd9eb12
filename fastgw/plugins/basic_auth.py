"""basic-auth: `Authorization: Basic` checked against consumers' scrypt password hashes.

scrypt costs tens of milliseconds on purpose, so it runs in a thread, never on the event loop;
concurrent requests with the same credentials share one verification, and a verified
credential is remembered for `cache_ttl` so the hash is not paid per request.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import os
from dataclasses import dataclass

from ..config.fields import duration, spec, string
from .base import Build, Phase, Plugin, Reply
from .consumers import Identity
from .passwords import DEFAULT_N, DEFAULT_P, DEFAULT_R, PasswordHash

CACHE_LIMIT = 10000  # verified credentials remembered per plugin instance

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
    authenticates = True

    def __init__(self, config: BasicAuthConfig, build: Build) -> None:
        super().__init__(config, build)
        self.users = build.consumers.by_user
        self.loop = build.services.loop
        self.authorization = build.watch("authorization")
        self.ttl = config.cache_ttl
        self.verified: dict[bytes, tuple[Identity, float]] = {}
        self.checking: dict[bytes, asyncio.Future] = {}
        realm = config.realm.replace('"', "").encode()
        challenge = b'WWW-Authenticate: Basic realm="' + realm + b'", charset="UTF-8"\r\n'
        self.missing = Reply(401, "authentication required", extra=challenge)
        self.invalid = Reply(401, "invalid authentication credentials", extra=challenge)

    def on_request(self, ex):
        value = ex.header(self.authorization)
        if value is None or value[:6].lower() != b"basic ":
            return self.missing.because("basic-auth: no Basic credentials")
        key = hashlib.sha256(value).digest()
        found = self.verified.get(key)
        if found is not None and found[1] > self.loop.time():
            ex.authenticated(found[0])
            return None
        try:
            user, sep, password = binascii.a2b_base64(
                value[6:].strip(), strict_mode=True
            ).partition(b":")
        except binascii.Error:
            user, sep, password = b"", b"", b""
        if not sep:
            return self.invalid.because("basic-auth: malformed credentials")
        return self.verify(ex, key, user, password)

    async def verify(self, ex, key: bytes, user: bytes, password: bytes) -> Reply | None:
        checking = self.checking.get(key)
        if checking is None:
            checking = self.checking[key] = self.loop.create_future()
            entry = self.users.get(user)
            hashed, identity = entry if entry is not None else (_DECOY, None)
            try:
                ok = await self.loop.run_in_executor(None, hashed.matches, password)
                checking.set_result(identity if ok else None)
            except Exception as exc:
                checking.set_exception(exc)
            finally:
                del self.checking[key]
        identity = await asyncio.shield(checking)
        if identity is None:
            return self.invalid.because(f"basic-auth: wrong password or unknown user {user!r}")
        if len(self.verified) >= CACHE_LIMIT:
            self.verified.clear()
        self.verified[key] = (identity, self.loop.time() + self.ttl)
        ex.authenticated(identity)
        return None
