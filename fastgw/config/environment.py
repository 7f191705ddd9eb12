"""Environment variables in config values: `${NAME}` and `${NAME:-default}`, as Kong, APISIX
and Traefik allow, so that secrets stay out of the file.

Substituted in string values (never keys) after the file is parsed and before it is
validated; `$${` is a literal `${`. An unset variable without a default is an error with its
path. What was substituted is remembered, so that messages and listings can show
`${NAME}` instead of the value (`redact`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .fields import join

REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Values shorter than this are not hidden in messages (ports, flags: no secrets, and hiding
# "1" would garble every number).
SHORTEST_SECRET = 4


class Substitution:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.errors: list[str] = []
        self.values: dict[str, str] = {}  # value -> the reference it came from

    def document(self, value: Any, path: str = "") -> Any:
        """`value` with every reference in its strings replaced."""
        if isinstance(value, str):
            return self.text(value, path) if "${" in value else value
        if isinstance(value, dict):
            return {key: self.document(item, join(path, str(key))) for key, item in value.items()}
        if isinstance(value, list):
            return [self.document(item, join(path, i)) for i, item in enumerate(value)]
        return value

    def text(self, value: str, path: str) -> str:
        def replace(match: re.Match) -> str:
            if match[0] == "$${":
                return "${"
            name, default = match[1], match[2]
            found = self.environ.get(name)
            if found is None or (found == "" and default is not None):
                if default is None:
                    self.errors.append(
                        f"{path or 'config'}: environment variable {name} is not set (use "
                        f"${{{name}:-default}} for a default)"
                    )
                    return ""
                return default  # written in the file: nothing to hide
            if len(found) >= SHORTEST_SECRET:
                self.values[found] = match[0]
            return found

        return REFERENCE.sub(replace, value)


def redact(text: str, hidden: dict[str, str]) -> str:
    """`text` with every substituted value (a key of `hidden`) shown as its reference."""
    for value in sorted(hidden, key=len, reverse=True):
        text = text.replace(value, hidden[value])
    return text
