"""Balancers: which target of an upstream a request goes to.

Every balancer is built over the targets in rotation, each with a weight above 0 (the cluster
leaves out the others, upstream/cluster.py), and has `pick(ex, exclude) -> Host | None`
(`exclude`: targets a failed attempt of this request already tried). Per request a pick reads a few attributes and does some
arithmetic; everything that can be is computed when the config loads.

- round_robin: smooth weighted round robin (nginx's): even spread, weights respected.
- least_conn: the fewest attempts in flight relative to weight; ties go to any of the tied
  targets with equal chance (not always the first).
- consistent_hash: a ring of virtual nodes (ketama-style, 160 per target at the mean
  weight); when one of N targets leaves, only about 1/N of the keys move. Keys are hashed
  with blake2b, so every worker and every gateway maps a key to the same target.
- ewma: peak-EWMA of each target's time to the response head, power of two choices: two
  targets at random, the one with the lower `ewma x (in_flight + 1) / weight` wins (Finagle's
  and tower's balancer; the state lives on the hosts, fastgw/upstream/host.py).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from bisect import bisect_right
from random import random
from typing import Any

VNODES = 160  # ring points of a target of average weight


class RoundRobin:
    """Picks targets in proportion to their weights."""

    __slots__ = ("current", "single", "targets", "total", "weights")

    def __init__(self, targets: list[Any], weights: list[int]) -> None:
        self.targets = targets
        self.weights = weights
        self.current = [0] * len(targets)
        self.total = sum(weights)
        # PERF: the common one-target upstream skips the arithmetic.
        self.single = targets[0] if len(targets) == 1 else None

    def pick(self, ex: Any = None, exclude: Any = None) -> Any:
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


class LeastConn:
    """The target with the fewest attempts in flight for its weight."""

    __slots__ = ("targets", "weights")

    def __init__(self, targets: list[Any], weights: list[int]) -> None:
        self.targets = targets
        self.weights = [1.0 / w for w in weights]  # PERF: multiplied, not divided, per pick

    def pick(self, ex: Any = None, exclude: Any = None) -> Any:
        weights = self.weights
        best = None
        lowest = math.inf
        ties = 0
        for index, target in enumerate(self.targets):
            if exclude and target in exclude:
                continue
            load = (target.in_flight + 1) * weights[index]
            if load < lowest:
                best, lowest, ties = target, load, 1
            elif load == lowest:
                ties += 1
                if random() * ties < 1.0:  # each of the tied targets equally likely
                    best = target
        return best


def ring_point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHash:
    """A ring of virtual nodes; a request without the key goes round robin."""

    __slots__ = ("fallback", "key", "owners", "points")

    def __init__(self, targets: list[Any], weights: list[int], key: Any) -> None:
        self.key = key  # a reader of the request's key: bytes, or None when it has none
        self.fallback = RoundRobin(targets, weights)
        mean = sum(weights) / len(weights) if weights else 1
        ring = sorted(
            (ring_point(b"%s#%d" % (target.label.encode(), node)), target)
            for target, weight in zip(targets, weights, strict=True)
            for node in range(max(1, round(VNODES * weight / mean)))
        )
        self.points = [point for point, _ in ring]
        self.owners = [target for _, target in ring]

    def pick(self, ex: Any = None, exclude: Any = None) -> Any:
        key = self.key(ex)
        owners = self.owners
        if not key or not owners:
            return self.fallback.pick(ex, exclude)
        index = bisect_right(self.points, ring_point(key))
        if index == len(owners):
            index = 0
        owner = owners[index]
        if exclude and owner in exclude:
            return self.next_owner(index, exclude)
        return owner

    def next_owner(self, index: int, exclude: Any) -> Any:
        """Failover: the next target along the ring that was not tried."""
        owners = self.owners
        for step in range(1, len(owners)):
            owner = owners[(index + step) % len(owners)]
            if owner not in exclude:
                return owner
        return None


class PeakEwma:
    """Power of two choices on `ewma x (in_flight + 1) / weight`."""

    __slots__ = ("count", "decay", "targets", "weights")

    def __init__(self, targets: list[Any], weights: list[int], decay: float, now: float) -> None:
        self.targets = targets
        self.weights = [1.0 / w for w in weights]
        self.count = len(targets)
        self.decay = decay
        # A target with no estimate yet (new, or back) starts at the upstream's median, not
        # at zero: zero would send it everything until its first answers came back.
        known = [t.ewma for t in self.targets if t.ewma >= 0]
        start = statistics.median(known) if known else 0.0
        for target in self.targets:
            if target.ewma < 0:
                target.ewma, target.ewma_at = start, now

    def pick(self, ex: Any = None, exclude: Any = None) -> Any:
        count = self.count
        if count < 2:
            target = self.targets[0] if count else None
            return None if target is None or (exclude and target in exclude) else target
        first = int(random() * count)
        second = int(random() * (count - 1))
        if second >= first:
            second += 1
        targets = self.targets
        a, b = targets[first], targets[second]
        if exclude and (a in exclude or b in exclude):
            return self.pick_untried(exclude)
        now = a.loop.time()
        decay = self.decay
        # PERF: `load` inline, twice.
        cost_a = a.ewma * math.exp((a.ewma_at - now) / decay) * (a.in_flight + 1)
        cost_b = b.ewma * math.exp((b.ewma_at - now) / decay) * (b.in_flight + 1)
        if cost_a * self.weights[first] <= cost_b * self.weights[second]:
            return a
        return b

    def pick_untried(self, exclude: Any) -> Any:
        """Failover: the cheapest target not tried yet (rare: scans them)."""
        now = self.targets[0].loop.time()
        best = None
        lowest = math.inf
        for target, weight in zip(self.targets, self.weights, strict=True):
            if target in exclude:
                continue
            cost = load(target, now, self.decay) * weight
            if cost < lowest:
                best, lowest = target, cost
        return best


def load(target: Any, now: float, decay: float) -> float:
    """A target's peak-EWMA cost before its weight: the estimate, decayed toward zero while
    it was not refreshed (tower's PeakEwma: a target that was slow is tried again after a
    while, and wins its traffic back if it recovered), times the attempts it would have."""
    return target.ewma * math.exp((target.ewma_at - now) / decay) * (target.in_flight + 1)
