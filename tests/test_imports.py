"""The package has no import cycles (imports for type checking included)."""

import ast
from pathlib import Path

from .support import ROOT


def imports_of(package: Path) -> dict[str, set[str]]:
    modules = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = base.split(".")
                stem = parts[: len(parts) - node.level + 1] if node.level else []
                target = ".".join(stem + ([node.module] if node.module else []))
                found = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(f for f in found if f in modules and f != name)
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for following in graph[node]:
            if following == start:
                return [*path, start]
            if following not in seen:
                seen.add(following)
                stack.append((following, [*path, following]))
    return None


def test_no_import_cycles():
    graph = imports_of(ROOT / "fastgw")
    assert "fastgw.http.exchange" in graph and graph["fastgw.http.client"]
    cycles = [c for name in sorted(graph) if (c := cycle_through(graph, name))]
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_architecture_document_names_only_files_that_exist():
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = text.split("## Modules (`fastgw/`)")[1].split("\n## ")[0]
    named = [m[1] for m in re.finditer(r"^([\w/.]+\.(?:py|html))\s", modules, re.M)]
    assert len(named) > 30
    assert [n for n in named if not (ROOT / "fastgw" / n).exists()] == []
    paths = re.findall(r"`((?:fastgw|tests|bench|config|deploy|docs)/[\w/.\-]+)`", text)
    assert [p for p in paths if not (ROOT / p).exists()] == []
