"""Where in a YAML file each value is, so that every error can say `file:line:column`.

PyYAML's nodes carry marks: the file is composed once more (only when it did not validate)
and each key path (`routes[0].upstream`, as the validator writes them) is mapped to the
position of its value, or of its key when the key itself is the problem. TOML is read with
the standard library's tomllib, which keeps no positions: its errors carry the path only.
"""

from __future__ import annotations

from typing import Any

import yaml

from .fields import join


def yaml_positions(data: bytes, loader: type) -> dict[str, tuple[int, int]]:
    """Key path -> (line, column), both from 1, of every value in the document."""
    try:
        root = yaml.compose(data, Loader=loader)
    except yaml.YAMLError:
        return {}
    found: dict[str, tuple[int, int]] = {}

    def walk(node: Any, path: str) -> None:
        found.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = join(path, str(key.value))
                # The key's own position: an unknown or misspelt key points at itself.
                found[child + " (key)"] = (key.start_mark.line + 1, key.start_mark.column + 1)
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                walk(value, join(path, i))

    if root is not None:
        walk(root, "")
    return found


def locate(error: str, positions: dict[str, tuple[int, int]], source: str) -> str:
    """`path: message` as `file:line:column: path: message`, at the path's value (its key for
    an unknown key), else at the nearest enclosing value the file has."""
    path, sep, message = error.partition(": ")
    if not sep:
        return f"{source}: {error}"
    place = positions.get(path + " (key)") if message.startswith("unknown key") else None
    candidate = path
    while place is None and candidate:
        place = positions.get(candidate)
        if place is None:
            candidate = parent(candidate)
    if place is None:
        return f"{source}: {error}"
    return f"{source}:{place[0]}:{place[1]}: {error}"


def parent(path: str) -> str:
    """`a.b[2].c` -> `a.b[2]` -> `a.b` -> `a` -> ``."""
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def yaml_syntax_error(exc: yaml.YAMLError, data: bytes, source: str) -> str:
    """A YAML syntax error on lines of its own: where, what, and the line quoted."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if mark is None:
        return f"{source}: invalid YAML: {problem}"
    lines = data.decode("utf-8", "replace").splitlines()
    quoted = lines[mark.line] if mark.line < len(lines) else ""
    number = f"{mark.line + 1}"
    text = f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"
    if context:
        text += f" ({context})"
    gutter = " " * len(number)
    return f"{text}\n    {number} | {quoted}\n    {gutter} | {' ' * mark.column}^"
