"""Plugin names to classes: the bundled plugins and those of `server.plugin_modules`."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

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
        raise ValueError(f"plugin name '{cls.name}' is empty or already taken")
    PLUGINS[cls.name] = cls
    return cls


def import_modules(names: tuple[str, ...], base: Path | None = None) -> list[str]:
    """Import plugin modules (they call `register`); the problems, one per module. An entry
    is a module name (`my_company.plugins`) or a file (`./plugins/audit.py`), relative to
    `base` (the config file's directory)."""
    problems = []
    for name in names:
        try:
            if name.endswith(".py") or "/" in name:
                import_file((base or Path.cwd()) / name)
            else:
                importlib.import_module(name)
        except Exception as exc:
            problems.append(f"cannot import plugin module '{name}': {type(exc).__name__}: {exc}")
    return problems


def import_file(path: Path) -> None:
    """A plugin module from a file, once per file (a reload does not run it again)."""
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    name = "fastgw_plugin_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


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
