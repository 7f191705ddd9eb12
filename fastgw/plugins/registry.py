"""Plugin names to classes: the bundled plugins and those of `server.plugin_modules`."""

from __future__ import annotations

import importlib

from .acl import Acl
from .base import Plugin
from .basic_auth import BasicAuth
from .concurrency_limit import ConcurrencyLimit
from .correlation_id import CorrelationId
from .cors import Cors
from .ip_restriction import IpRestriction
from .jwt_auth import JwtAuth
from .key_auth import KeyAuth
from .oauth2_introspection import OAuth2Introspection
from .quota import Quota
from .rate_limit import RateLimit
from .request_size_limit import RequestSizeLimit

PLUGINS: dict[str, type[Plugin]] = {}


def register(cls: type[Plugin]) -> type[Plugin]:
    """Make a plugin class known by its `name` (usable as a class decorator)."""
    if not cls.name or (cls.name in PLUGINS and PLUGINS[cls.name] is not cls):
        raise ValueError(f"plugin name {cls.name!r} is empty or already taken")
    PLUGINS[cls.name] = cls
    return cls


def import_modules(names: tuple[str, ...]) -> list[str]:
    """Import plugin modules (they call `register`); the problems, one per module."""
    problems = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            problems.append(f"cannot import plugin module '{name}': {exc!r}")
    return problems


for _cls in (
    Acl,
    BasicAuth,
    ConcurrencyLimit,
    CorrelationId,
    Cors,
    IpRestriction,
    JwtAuth,
    KeyAuth,
    OAuth2Introspection,
    Quota,
    RateLimit,
    RequestSizeLimit,
):
    register(_cls)
