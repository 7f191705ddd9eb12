"""What the admin API and the CLI show of a loaded config: the config as JSON with every
secret redacted, and the compiled route table (`fastgw routes`, `GET /routes`)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from .config.environment import redact
from .config.loader import Loaded, build_router
from .plugins.config import effective

REDACTED = "<redacted>"
# Fields whose values are credentials, wherever they appear (consumers, plugins, admin, redis).
SECRET_FIELDS = frozenset(
    {
        "keys",
        "key_sha256",
        "password",
        "password_hash",
        "secret",
        "client_secret",
        "token",
        "private_key",
    }
)
URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*(@)")


def config_json(loaded: Loaded) -> dict[str, Any]:
    """The live config as plain JSON values, secrets redacted."""
    return {
        "source": loaded.source,
        "digest": loaded.digest,
        "config": plain(loaded.config, loaded.hidden),
    }


def plain(value: Any, hidden: dict[str, str], secret: bool = False) -> Any:
    """A config value as JSON values; under a secret field every leaf is redacted, and any
    string that came from the environment shows its `${NAME}`."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: plain(
                getattr(value, field.name), hidden, secret or field.name in SECRET_FIELDS
            )
            for field in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {
            str(key): plain(item, hidden, secret or str(key) in SECRET_FIELDS)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain(item, hidden, secret) for item in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if value is None or isinstance(value, bool):
        return value
    if secret:
        return REDACTED
    if isinstance(value, (int, float)):
        return value
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return URL_PASSWORD.sub(rf"\1{REDACTED}\2", redact(text, hidden))


def describe_upstream(route: Any) -> str:
    """`orders`, or a split as `blue:90,green:10`; a mirror as `+mirror:shadow`."""
    upstream = route.upstream
    text = (
        upstream
        if isinstance(upstream, str)
        else ",".join(f"{side.upstream}:{side.weight}" for side in upstream.split)
    )
    if route.mirror is not None:
        text += f" +mirror:{route.mirror.upstream}"
    return text


def route_table(loaded: Loaded) -> list[dict[str, str]]:
    """The compiled route table, most specific first."""
    routes = loaded.config.routes
    router, _ = build_router(routes)
    rows = []
    for pattern, methods, hosts, index in router.describe():
        route = routes[int(index)]
        options = [
            name
            for name, on in (
                ("strip_prefix", route.strip_prefix),
                ("no_preserve_host", not route.preserve_host),
            )
            if on
        ]
        headers = ",".join(f"{k}={v}" for k, v in (route.match.headers or {}).items())
        if headers:
            options.append(f"headers:{loaded.redact(headers)}")
        active = ",".join(e.name for e in effective(loaded.config.plugins, route.plugins))
        if active:
            options.append(f"plugins:{active}")
        rows.append(
            {
                "path": pattern,
                "methods": methods,
                "hosts": hosts,
                "route": route.name or f"routes[{index}]",
                "upstream": describe_upstream(route),
                "options": ",".join(options) or "-",
            }
        )
    return rows
