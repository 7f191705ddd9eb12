"""`plugins:` sections: parsing each entry with its plugin's schema, and merging global ones.

A route's entry replaces the global entry of the same name; `NAME: {enabled: false}` switches
a global plugin off for that route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.fields import INVALID, Errors, boolean, describe, join, record
from .registry import PLUGINS

if TYPE_CHECKING:
    from ..config.traffic import TrafficContext

NAME_PATTERN = "a kebab-case plugin name"


@dataclass(frozen=True)
class PluginEntry:
    name: str
    enabled: bool
    config: Any  # the plugin's Config instance; None for an entry that only toggles
    path: str  # where it was written, for messages


def parse_plugins(value: Any, path: str, errors: Errors) -> Any:
    """`{NAME: CONFIG}` -> {name: PluginEntry}; each CONFIG is checked by its plugin's schema.

    Entries with errors are left out but the others are kept, so that their own checks
    (`check_entries`) still run and every mistake is reported in one pass.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        return errors.add(
            path, f"expected a mapping of plugin names to configs, got {describe(value)}"
        )
    entries: dict[str, PluginEntry] = {}
    for name, raw in value.items():
        sub = join(path, str(name))
        cls = PLUGINS.get(name) if isinstance(name, str) else None
        if cls is None:
            known = ", ".join(sorted(PLUGINS))
            errors.add(sub, f"unknown plugin {describe(name)} (known: {known})")
            continue
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            errors.add(sub, f"expected a mapping (the plugin's settings), got {describe(raw)}")
            continue
        settings = dict(raw)
        enabled = True
        if "enabled" in settings:
            enabled = boolean(settings.pop("enabled"), join(sub, "enabled"), errors)
            if enabled is INVALID:
                continue
        if not settings and "enabled" in raw:
            entries[name] = PluginEntry(name, enabled, None, sub)
            continue
        parsed = record(cls.Config)(settings, sub, errors)
        if parsed is not INVALID:
            entries[name] = PluginEntry(name, enabled, parsed, sub)
    return entries


def effective(
    global_entries: dict[str, PluginEntry], route_entries: dict[str, PluginEntry]
) -> list[PluginEntry]:
    """The plugins active on a route: the global ones, overridden or switched off by its own.

    An entry that only says `enabled: true` keeps the global settings (or the defaults).
    """
    merged = dict(global_entries)
    for name, entry in route_entries.items():
        if entry.config is None and name in merged:
            entry = PluginEntry(name, entry.enabled, merged[name].config, merged[name].path)
        merged[name] = entry
    return [entry for entry in merged.values() if entry.enabled]


def check_entries(
    global_entries: dict[str, PluginEntry],
    routes: list[Any],
    context: TrafficContext,
    errors: Errors,
) -> None:
    """Each plugin's own cross-field checks and its checks against the config's other
    sections, once per written entry (and once for the defaults of a route's
    `{enabled: true}` that has no global entry to inherit)."""
    entries = list(global_entries.values())
    by_route = []
    for i, route in enumerate(routes):
        if route is not INVALID:
            active = effective(global_entries, route.plugins)
            entries += active
            by_route.append((f"routes[{i}]", active))
    checked: dict[str, Any] = {}
    for entry in entries:
        if entry.path in checked or (not entry.enabled and entry.config is None):
            continue
        config = entry.config if entry.config is not None else default_config(entry, errors)
        checked[entry.path] = config
        if config is not INVALID:
            PLUGINS[entry.name].check(config, entry.path, errors)
            PLUGINS[entry.name].check_context(config, entry.path, context, errors)
    for route_path, active in by_route:
        phases = {PLUGINS[entry.name].phase for entry in active}
        for entry in active:
            config = checked.get(entry.path, INVALID)
            if config is not INVALID:
                PLUGINS[entry.name].check_route(config, entry.path, route_path, phases, errors)


def default_config(entry: PluginEntry, errors: Errors) -> Any:
    """The settings of `NAME: {enabled: true}` with no global entry: the plugin's defaults."""
    return record(PLUGINS[entry.name].Config)({}, entry.path, errors)
