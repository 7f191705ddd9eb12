"""Read a TOML or YAML config file and validate it completely, collecting every error."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..plugins.base import Phase
from ..plugins.config import check_entries, effective, parse_plugins
from ..plugins.consumers import parse_consumers
from ..plugins.registry import PLUGINS, import_modules
from ..router import Router
from .environment import Substitution, redact
from .fields import INVALID, Errors, describe, join, optional, record
from .positions import locate, yaml_positions, yaml_syntax_error
from .schema import (
    Config,
    Route,
    Server,
    check_upstream,
    parse_metrics,
    parse_route,
    parse_server,
    parse_tracing,
    parse_upstream,
)
from .traffic import RedisSettings, TrafficContext, parse_plans
from .warnings import config_warnings

parse_redis = optional(record(RedisSettings))

TOP_LEVEL_KEYS = (
    "server",
    "upstreams",
    "routes",
    "plugins",
    "consumers",
    "redis",
    "plans",
    "tracing",
    "metrics",
)


class ConfigError(Exception):
    """The file could not be used; `errors` holds every problem as `path: message`, and
    `shown` the same as printed: with `file:line:column:` where the format gives it."""

    def __init__(self, source: str, errors: list[str], shown: list[str] | None = None) -> None:
        self.source = source
        self.errors = errors
        self.shown = shown or errors
        super().__init__(
            f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in self.shown)
        )


@dataclass(frozen=True)
class Loaded:
    """A validated config and where it came from."""

    config: Config
    source: str
    digest: str  # first 12 hex digits of the file's sha256: names the config version in logs
    # Values that came from environment variables -> their `${NAME}`: never printed.
    hidden: dict[str, str] = field(default_factory=dict)
    # Valid but almost certainly wrong (config/warnings.py): printed by check, logged at load.
    warnings: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        """`text` with every value substituted from the environment shown as `${NAME}`."""
        return redact(text, self.hidden)


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true and false. YAML 1.1 also reads
    yes/no/on/off as booleans, which turns a key such as `on:` (passive health) into True."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_document(path: Path) -> Any:
    """Parse the file by extension: .toml with tomllib, .yaml/.yml with PyYAML."""
    data = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            return tomllib.loads(data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), [f"invalid TOML: {exc}"]) from None
    if suffix in (".yaml", ".yml"):
        try:
            return yaml.load(data, Loader=YamlLoader)
        except yaml.YAMLError as exc:
            flat = f"invalid YAML: {exc}".replace("\n", " ")
            raise ConfigError(
                str(path), [flat], [yaml_syntax_error(exc, data, str(path))]
            ) from None
    raise ConfigError(str(path), [f"unknown file type '{suffix}' (expected .toml, .yaml or .yml)"])


def load(path: str | Path) -> Loaded:
    """Read and validate a config file; raise ConfigError listing all problems."""
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    substitution = Substitution(os.environ)
    document = substitution.document(read_document(path))
    try:
        config = validate(document, str(path))
    except ConfigError as exc:
        errors = [redact(e, substitution.values) for e in substitution.errors + exc.errors]
        raise located(path, raw_bytes, errors) from None
    if substitution.errors:
        raise located(path, raw_bytes, substitution.errors)
    digest = hashlib.sha256(raw_bytes).hexdigest()[:12]
    warned = tuple(redact(w, substitution.values) for w in config_warnings(config))
    return Loaded(config, str(path), digest, substitution.values, warned)


def located(path: Path, data: bytes, errors: list[str]) -> ConfigError:
    """The errors of a file, each shown at its line and column when the format gives them."""
    if path.suffix.lower() not in (".yaml", ".yml"):
        return ConfigError(str(path), errors)
    positions = yaml_positions(data, YamlLoader)
    return ConfigError(str(path), errors, [locate(e, positions, str(path)) for e in errors])


def validate(document: Any, source: str = "config") -> Config:
    errors = Errors()
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            source, [f"expected a mapping at the top level, got {describe(document)}"]
        )
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            errors.add(str(key), f"unknown key (expected one of: {', '.join(TOP_LEVEL_KEYS)})")
    server = parse_server(document.get("server"), "server", errors)
    if server is not INVALID:
        base = Path(source).parent if source != "config" else None
        for problem in import_modules(server.plugin_modules, base):
            errors.add("server.plugin_modules", problem)
    upstreams = _parse_upstreams(document.get("upstreams"), errors)
    redis = parse_redis(document.get("redis"), "redis", errors)
    plans = parse_plans(document.get("plans"), "plans", errors)
    plans = plans if plans is not INVALID else {}
    consumers = parse_consumers(document.get("consumers"), errors, plans)
    global_plugins = parse_plugins(document.get("plugins"), "plugins", errors)
    routes = _parse_routes(document.get("routes"), errors)
    tracing = parse_tracing(document.get("tracing"), "tracing", errors)
    metrics = parse_metrics(document.get("metrics"), "metrics", errors)
    _check_references(document.get("upstreams"), document.get("routes"), routes, errors)
    _check_ties(routes, errors)
    _check_hash_on_consumer(upstreams, routes, global_plugins, errors)
    context = TrafficContext(redis if redis is not INVALID else None, plans)
    check_entries(global_plugins if global_plugins is not INVALID else {}, routes, context, errors)
    if errors:
        raise ConfigError(source, errors.items)
    assert isinstance(server, Server)
    return Config(
        server=server,
        upstreams=upstreams,
        routes=tuple(r for r in routes if r is not INVALID),
        plugins=global_plugins,
        consumers=consumers,
        redis=redis,
        plans=plans,
        tracing=tracing,
        metrics=metrics,
    )


def _parse_upstreams(raw: Any, errors: Errors) -> dict[str, Any]:
    # Required and never empty: an empty or cut-off file must not go live and drop every route.
    if raw is None or raw == {}:
        errors.add("upstreams", "expected at least one upstream (the section is missing or empty)")
        return {}
    if not isinstance(raw, dict):
        errors.add(
            "upstreams", f"expected a mapping of upstream names to upstreams, got {describe(raw)}"
        )
        return {}
    upstreams = {}
    for name, value in raw.items():
        path = join("upstreams", str(name))
        upstream = upstreams[name] = parse_upstream(value, path, errors)
        if upstream is not INVALID:
            check_upstream(upstream, path, errors)
    return upstreams


def _parse_routes(raw: Any, errors: Errors) -> list[Any]:
    if raw is None or raw == []:
        errors.add("routes", "expected at least one route (the section is missing or empty)")
        return []
    if not isinstance(raw, list):
        errors.add("routes", f"expected a list of routes, got {describe(raw)}")
        return []
    return [parse_route(value, join("routes", i), errors) for i, value in enumerate(raw)]


def _check_hash_on_consumer(
    upstreams: dict[str, Any], routes: list[Any], global_plugins: Any, errors: Errors
) -> None:
    """An upstream that hashes on the consumer needs an authentication plugin on its routes."""
    globals_ = global_plugins if global_plugins is not INVALID else {}
    for i, route in enumerate(routes):
        if route is INVALID:
            continue
        hashing = [
            (key, name)
            for key, name in route.upstream_names()
            if getattr(upstreams.get(name), "hash_on", None) == "consumer"
        ]
        split = route.upstream if not isinstance(route.upstream, str) else None
        sticky_consumer = split is not None and split.sticky == "consumer"
        if not hashing and not sticky_consumer:
            continue
        phases = {PLUGINS[entry.name].phase for entry in effective(globals_, route.plugins)}
        if Phase.AUTHENTICATION in phases:
            continue
        for key, name in hashing:
            errors.add(
                f"routes[{i}].{key}",
                f"upstream '{name}' hashes on the consumer (hash_on: consumer), but "
                "no authentication plugin runs on this route",
            )
        if sticky_consumer:
            errors.add(
                f"routes[{i}].upstream.sticky",
                "sticky: consumer needs an authentication plugin on this route",
            )


def _check_references(
    raw_upstreams: Any, raw_routes: Any, routes: list[Any], errors: Errors
) -> None:
    known = sorted(str(k) for k in raw_upstreams) if isinstance(raw_upstreams, dict) else []
    names: dict[str, int] = {}
    for i, route in enumerate(routes):
        if route is INVALID:
            # Another mistake in the route (a misspelt key) must not hide this one.
            for key, name in _raw_upstream_names(raw_routes[i]):
                if name not in known:
                    errors.add(
                        f"routes[{i}].{key}",
                        f"unknown upstream '{name}' (known: {', '.join(known) or 'none defined'})",
                    )
            continue
        for key, name in route.upstream_names():
            if name not in known:
                errors.add(
                    f"routes[{i}].{key}",
                    f"unknown upstream '{name}' (known: {', '.join(known) or 'none defined'})",
                )
        if route.name is not None:
            if route.name in names:
                errors.add(
                    f"routes[{i}].name",
                    f"duplicate route name '{route.name}' (also routes[{names[route.name]}])",
                )
            else:
                names[route.name] = i


def _raw_upstream_names(raw: Any) -> list[tuple[str, str]]:
    """(key path, name) of the upstreams a route that did not validate names as plain text."""
    if not isinstance(raw, dict):
        return []
    named = []
    if isinstance(raw.get("upstream"), str):
        named.append(("upstream", raw["upstream"]))
    mirror = raw.get("mirror")
    if isinstance(mirror, dict) and isinstance(mirror.get("upstream"), str):
        named.append(("mirror.upstream", mirror["upstream"]))
    return named


def build_router(
    routes: list[Route] | tuple[Route, ...], compiled: list[Any] | None = None
) -> tuple[Router, list[tuple[int, str]]]:
    """Router over `routes`; each entry maps to `compiled[i]` (or its index). Returns ties too."""
    router = Router()
    for i, route in enumerate(routes):
        if route is INVALID:
            continue
        target = compiled[i] if compiled is not None else i
        for path in route.match.paths:
            router.add(target, i, path, route.match.methods, route.match.hosts, route.match.headers)
    return router, router.finish()


def _check_ties(routes: list[Any], errors: Errors) -> None:
    _, ties = build_router(routes)
    for index, message in ties:
        errors.add(f"routes[{index}].match", message)
