"""Smooth weighted round robin (nginx's algorithm): even spread, weights respected."""

from __future__ import annotations

from typing import Any


class RoundRobin:
    """Picks targets in proportion to their weights; weight 0 switches a target off."""

    __slots__ = ("current", "single", "targets", "total", "weights")

    def __init__(self, targets: list[Any], weights: list[int]) -> None:
        live = [(t, w) for t, w in zip(targets, weights, strict=True) if w > 0]
        self.targets = [t for t, _ in live]
        self.weights = [w for _, w in live]
        self.current = [0] * len(live)
        self.total = sum(self.weights)
        # PERF: the common one-target upstream skips the arithmetic.
        self.single = self.targets[0] if len(live) == 1 else None

    def pick(self, exclude: Any = None) -> Any:
        """The next target, skipping those in `exclude` (a container or None); None if none left."""
        if self.single is not None:
            return self.single if not exclude or self.single not in exclude else None
        best = -1
        total = 0
        current = self.current
        for i, target in enumerate(self.targets):
            if exclude and target in exclude:
                continue
            current[i] += self.weights[i]
            total += self.weights[i]
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return self.targets[best]
