"""Key sets for jwt-auth: a JWKS fetched from a URL (kept fresh) or read from a file.

The URL is fetched in the background at start and on a schedule; a token whose `kid` is not
in the set triggers one refresh, at most once per `min_interval`, so tokens with random kids
cannot make the gateway flood the identity provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
from typing import Any

from ..outbound import OutboundError, fetch

log = logging.getLogger("fastgw.plugins.jwks")


def parse_jwks(document: Any) -> dict[str | None, dict]:
    """kid -> JWK (dict) of a JWKS document; raises ValueError with a readable reason."""
    from jwt import PyJWKSet  # on first use: see jwt_auth
    from jwt.exceptions import PyJWKError, PyJWKSetError

    if isinstance(document, (bytes, str)):
        try:
            document = json.loads(document)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
    try:
        PyJWKSet.from_dict(document)  # validates every usable key
    except (PyJWKSetError, PyJWKError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a usable JWKS: {exc}") from None
    return {key.get("kid"): key for key in document["keys"] if key.get("use", "sig") == "sig"}


class KeySet:
    """Keys by kid, with the PyJWK for each (kid, alg) built on first use."""

    def __init__(self, keys: dict[str | None, dict] | None = None) -> None:
        self.keys: dict[str | None, dict] = keys or {}
        self.built: dict[tuple[str | None, str], Any] = {}
        self.version = 0  # changes whenever the keys change (token caches follow it)

    def replace(self, keys: dict[str | None, dict]) -> None:
        if keys != self.keys:
            self.keys = keys
            self.built = {}
            self.version += 1

    def lookup(self, kid: str | None, alg: str) -> Any:
        """The PyJWK for a token header; None when the set has no such key for this algorithm."""
        found = self.built.get((kid, alg), False)
        if found is not False:
            return found
        jwk = self.keys.get(kid)
        if jwk is None and kid is None and len(self.keys) == 1:
            jwk = next(iter(self.keys.values()))
        key = None
        if jwk is not None and jwk.get("alg", alg) == alg:
            from jwt import PyJWK
            from jwt.exceptions import PyJWKError

            try:
                key = PyJWK(jwk, algorithm=alg)
            except PyJWKError:
                key = None  # the key's type does not fit this algorithm
        self.built[(kid, alg)] = key
        return key


class RemoteKeySet(KeySet):
    """A KeySet fetched from a JWKS URL; shared by every route that names the same URL."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        url: str,
        refresh: float,
        min_interval: float,
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__()
        self.loop = loop
        self.url = url
        self.refresh_every = refresh
        self.min_interval = min_interval
        self.tls = tls
        self.loaded = False
        self.last_attempt = -math.inf
        self.fetching: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.start_fetch()

    def start_fetch(self) -> asyncio.Task:
        if self.fetching is None:
            self.last_attempt = self.loop.time()
            self.fetching = self.loop.create_task(self._fetch())
        return self.fetching

    async def refresh(self) -> bool:
        """Fetch again now unless one was tried within `min_interval`; True if keys are loaded."""
        if self.fetching is None and self.loop.time() - self.last_attempt < self.min_interval:
            return self.loaded
        await asyncio.shield(self.start_fetch())
        return self.loaded

    async def _fetch(self) -> None:
        try:
            status, body = await fetch(self.url, tls=self.tls)
            if status != 200:
                raise OutboundError(f"GET {self.url}: status {status}")
            keys = parse_jwks(body)
        except (OutboundError, ValueError) as exc:
            log.warning("JWKS %s: %s (keeping %d key(s))", self.url, exc, len(self.keys))
        else:
            if keys != self.keys:
                log.info("JWKS %s: %d key(s) loaded", self.url, len(keys))
            self.replace(keys)
            self.loaded = True
        finally:
            self.fetching = None
            if not self.closed:
                if self.timer is not None:
                    self.timer.cancel()
                delay = self.refresh_every if self.loaded else min(self.min_interval, 5.0)
                self.timer = self.loop.call_later(delay, self.start_fetch)

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.fetching is not None:
            self.fetching.cancel()
