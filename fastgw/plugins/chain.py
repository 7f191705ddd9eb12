"""Compile the plugins of a config into per-route, per-phase tuples of bound hooks.

Done once per load: a route gets only the hooks its plugins define, in the fixed phase order
(response hooks in reverse), so a phase no plugin uses costs nothing per request.
"""

from __future__ import annotations

from typing import Any

from ..config.fields import Errors
from ..http.headers import drop_named
from .base import Build, Plugin
from .config import PluginEntry, default_config, effective
from .registry import PLUGINS


class Chain:
    """The bound hooks of one route."""

    __slots__ = ("access", "body", "fields", "log", "max_body", "reframe", "response")

    def __init__(self, plugins: list[Plugin]) -> None:
        self.access = hooks(plugins, "on_request")
        self.response = hooks(plugins[::-1], "on_response")
        # Lines plugins add on the request side (`ex.add_response_fields`): the exchange
        # appends them to every response of the route after the response hooks (no hook).
        self.fields = any(getattr(plugin, "adds_fields", False) for plugin in plugins)
        bodied = [p for p in reversed(plugins) if getattr(p, "on_response_body", None)]
        self.body = hooks(bodied, "on_response_body")
        # A body hook that may change the body's length: responses are sent chunked (or
        # close-delimited to HTTP/1.0 clients) instead of with the upstream's Content-Length.
        self.reframe = any(p.changes_length for p in bodied)
        if self.reframe:
            self.response = (drop_length, *self.response)  # first: hooks see the head as sent
        self.log = hooks(plugins, "on_log")
        # A plugin may set the route's largest request body (request-size-limit): applied at
        # routing, before any hook runs, with no hook of its own.
        limits = [
            p.route_max_body for p in plugins if getattr(p, "route_max_body", None) is not None
        ]
        self.max_body = limits[0] if limits else None


def drop_length(ex: Any, status: int, head: list[bytes]) -> None:
    """The first response hook of routes whose body hooks may change the body's length: the
    upstream's Content-Length goes (the body is then sent chunked, or close-delimited)."""
    head[:] = drop_named(head, {b"content-length"})


def hooks(plugins: list[Plugin], name: str) -> tuple:
    """The bound `name` hooks of the plugins that define it (an instance may set it to None
    to leave a phase it does not need on this route)."""
    bound = (getattr(plugin, name, None) for plugin in plugins)
    return tuple(hook for hook in bound if hook is not None)


EMPTY = Chain([])


class ChainBuilder:
    """Builds plugin instances for one runtime; a global entry is one instance for all routes."""

    def __init__(self, global_entries: dict[str, PluginEntry], build: Build) -> None:
        self.global_entries = global_entries
        self.build = build
        self.instances: dict[str, Plugin] = {}  # by the path of the entry that configured it

    def chain_for(self, route_entries: dict[str, PluginEntry]) -> Chain:
        active = effective(self.global_entries, route_entries)
        if not active:
            return EMPTY
        plugins = [self.instance(entry) for entry in active]
        plugins.sort(key=lambda p: (p.phase, -p.priority, p.name))
        return Chain(plugins)

    def instance(self, entry: PluginEntry) -> Plugin:
        plugin = self.instances.get(entry.path)
        if plugin is None:
            config = entry.config
            if config is None:
                config = default_config(entry, Errors())
            self.build.entry_path = entry.path
            plugin = self.instances[entry.path] = PLUGINS[entry.name](config, self.build)
        return plugin

    def plugins(self) -> list[Any]:
        return list(self.instances.values())
