"""Configs that are valid but almost certainly wrong: printed by `fastgw check`, logged at
each load, never fatal."""

from __future__ import annotations

from .schema import Config

SHORTEST_HMAC_SECRET = 32  # bytes: RFC 7518 wants a key at least as long as the hash


def config_warnings(config: Config) -> list[str]:
    """Every warning as `path: message`.

    No route can be shadowed by another here (a route that never matches because one listed
    before it always wins, as in nginx's regex locations or Kong's ordered routes): the most
    specific route wins whatever the order, and two equally specific routes that could match
    one request are an error (a tie), so there is nothing of the kind to warn about.
    """
    found = []
    entries = [(entry.path, entry) for entry in config.plugins.values()]
    entries += [(entry.path, entry) for route in config.routes for entry in route.plugins.values()]
    for path, entry in entries:
        settings = entry.config
        secret = getattr(settings, "secret", None) if entry.name == "jwt-auth" else None
        if secret is not None and len(secret.encode()) < SHORTEST_HMAC_SECRET:
            found.append(
                f"{path}.secret: an HMAC secret of {len(secret.encode())} bytes is easy to guess "
                f"offline from one token; use {SHORTEST_HMAC_SECRET} random bytes or more"
            )
    for name, upstream in config.upstreams.items():
        if upstream.targets and not any(target.weight for target in upstream.targets):
            found.append(
                f"upstreams.{name}.targets: every target has weight 0: requests to it are "
                "answered 503"
            )
    return found
