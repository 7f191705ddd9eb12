"""Worker-lifetime services for plugins: state that should outlive one config load.

A JWKS cache, for example, is keyed by its URL here, so a reload that keeps the same URL keeps
the fetched keys instead of fetching again; what no live config uses any more is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Services:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.kept: dict[Any, Any] = {}
        self.used: set[Any] = set()

    def keep(self, key: Any, factory: Callable[[], Any]) -> Any:
        """The object kept under `key`, made by `factory` the first time."""
        self.used.add(key)
        found = self.kept.get(key)
        if found is None:
            found = self.kept[key] = factory()
        return found

    def retain(self) -> None:
        """After a load: close what the new config did not ask for (objects with `close`)."""
        for key in list(self.kept):
            if key not in self.used:
                self.kept.pop(key).close()
        self.used = set()
