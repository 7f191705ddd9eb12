"""A small validation kit: a frozen dataclass is the schema, each field names its parser.

Why not a schema library: every message must carry the key path as written in the file
(`routes[2].upstream`) and say what was expected, and all errors must come out at once,
cross-references included. Parsers here are plain functions `(value, path, errors) -> value`
that return `INVALID` after recording an error, so one pass collects everything.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "INVALID"})()

Parser = Callable[[Any, str, "Errors"], Any]


class Errors:
    """Collects `path: message` lines; the loader reports them all together."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> Any:
        self.items.append(f"{path}: {message}" if path else message)
        return INVALID

    def __bool__(self) -> bool:
        return bool(self.items)


def describe(value: Any) -> str:
    """How a bad value is shown in an error: its repr, shortened."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def spec(parse: Parser, default: Any = dataclasses.MISSING, *, factory: Any = None) -> Any:
    """A dataclass field that knows how to parse itself from the config file."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"parse": parse})
    return dataclasses.field(default=default, metadata={"parse": parse})


def record(cls: type) -> Parser:
    """Parse a mapping into the frozen dataclass `cls`; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def parse(value: Any, path: str, errors: Errors) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return errors.add(path, f"expected a mapping, got {describe(value)}")
        known = ", ".join(fields)
        kwargs: dict[str, Any] = {}
        ok = True
        for key in value:
            if key not in fields:
                errors.add(join(path, str(key)), f"unknown key (expected one of: {known})")
                ok = False
        for name, field in fields.items():
            sub = join(path, name)
            if name not in value:
                if (
                    field.default is dataclasses.MISSING
                    and field.default_factory is dataclasses.MISSING
                ):
                    errors.add(sub, "required key is missing")
                    ok = False
                continue
            parsed = field.metadata["parse"](value[name], sub, errors)
            if parsed is INVALID:
                ok = False
            else:
                kwargs[name] = parsed
        return cls(**kwargs) if ok else INVALID

    return parse


def list_of(item: Parser, *, min_len: int = 0, allow_single: bool = False) -> Parser:
    def parse(value: Any, path: str, errors: Errors) -> Any:
        if allow_single and not isinstance(value, list):
            value = [value]
        if not isinstance(value, list):
            return errors.add(path, f"expected a list, got {describe(value)}")
        if len(value) < min_len:
            return errors.add(path, f"expected at least {min_len} item(s)")
        out = [item(v, join(path, i), errors) for i, v in enumerate(value)]
        return INVALID if any(v is INVALID for v in out) else tuple(out)

    return parse


def mapping_of(item: Parser, *, key_pattern: str = r".+", key_hint: str = "a name") -> Parser:
    key_re = re.compile(key_pattern)

    def parse(value: Any, path: str, errors: Errors) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return errors.add(path, f"expected a mapping, got {describe(value)}")
        out: dict[str, Any] = {}
        ok = True
        for key, sub_value in value.items():
            sub = join(path, str(key))
            if not isinstance(key, str) or not key_re.fullmatch(key):
                errors.add(sub, f"invalid key {describe(key)} (expected {key_hint})")
                ok = False
                continue
            parsed = item(sub_value, sub, errors)
            if parsed is INVALID:
                ok = False
            else:
                out[key] = parsed
        return out if ok else INVALID

    return parse


def string(*, pattern: str | None = None, hint: str = "a string", lower: bool = False) -> Parser:
    compiled = re.compile(pattern) if pattern else None

    def parse(value: Any, path: str, errors: Errors) -> Any:
        if not isinstance(value, str) or (compiled and not compiled.fullmatch(value)):
            return errors.add(path, f"expected {hint}, got {describe(value)}")
        return value.lower() if lower else value

    return parse


def optional(parse: Parser) -> Parser:
    """`parse`, or None when the value is null (`~` in YAML): switches a setting off."""

    def parse_optional(value: Any, path: str, errors: Errors) -> Any:
        return None if value is None else parse(value, path, errors)

    return parse_optional


def boolean(value: Any, path: str, errors: Errors) -> Any:
    if not isinstance(value, bool):
        return errors.add(path, f"expected true or false, got {describe(value)}")
    return value


def integer(*, min: int | None = None, max: int | None = None) -> Parser:
    bounds = " ".join(
        part
        for part in (f">= {min}" if min is not None else "", f"<= {max}" if max is not None else "")
        if part
    )
    hint = f"an integer {bounds}".strip()

    def parse(value: Any, path: str, errors: Errors) -> Any:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (min is not None and value < min)
            or (max is not None and value > max)
        ):
            return errors.add(path, f"expected {hint}, got {describe(value)}")
        return value

    return parse


def number(*, min: float = 0.0, max: float | None = None) -> Parser:
    """A float (an int is taken too) within the bounds."""
    hint = f"a number >= {min:g}" + (f" and <= {max:g}" if max is not None else "")

    def parse(value: Any, path: str, errors: Errors) -> Any:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < min
            or (max is not None and value > max)
        ):
            return errors.add(path, f"expected {hint}, got {describe(value)}")
        return float(value)

    return parse


def one_of(*choices: str) -> Parser:
    def parse(value: Any, path: str, errors: Errors) -> Any:
        if value not in choices:
            return errors.add(path, f"expected one of {', '.join(choices)}, got {describe(value)}")
        return value

    return parse


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def duration(value: Any, path: str, errors: Errors) -> Any:
    """Seconds as a float, from `250ms`, `10s`, `5m`, `1h`, `1d` or a plain number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return errors.add(
        path,
        f"expected a duration such as 250ms, 10s, 5m, 1h, 1d or plain seconds, got {describe(value)}",
    )


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB)?")
_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, None: 1}


def size(value: Any, path: str, errors: Errors) -> Any:
    """Bytes as an int, from plain bytes or `16KiB`, `10MiB`, `1GiB`."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    return errors.add(path, f"expected a size such as 16384, 16KiB or 10MiB, got {describe(value)}")
