"""Active health: probes from one process of the gateway, a verdict every worker follows.

Worker 0 probes (it exists in every gateway and the master restarts it if it dies): each
target of an upstream with `health_check.active` gets `GET path` every `interval` on a new
connection; `healthy` consecutive passes (a status in `expect_status` within `timeout`) make
it healthy, `unhealthy` consecutive failures unhealthy. The verdict goes into a table in
shared memory (made by the master before it forks, so it outlives worker restarts and
reloads); every worker reads the table every POLL seconds and rebuilds a cluster's rotation
when a verdict changed. Requests pay nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
from typing import Any

from ..outbound import OutboundError, fetch

# Hosts, clusters and the settings (config.schema.ActiveHealth) are not imported, even for
# type checking: the schema imports the plugins, whose services import this module.
Host = Cluster = ActiveHealth = Any

log = logging.getLogger("fastgw.health")

POLL = 0.25  # seconds between a worker's looks at the verdicts
SLOTS = 4096  # targets with active health in one gateway, at most
UNKNOWN, HEALTHY, UNHEALTHY = 0, 1, 2
SLOT = 9  # an 8-byte tag and a 1-byte verdict (a single byte: written and read whole)


class HealthTable:
    """Verdicts by target, shared by the workers; only worker 0 writes."""

    __slots__ = ("memory",)

    def __init__(self) -> None:
        self.memory = mmap.mmap(-1, SLOTS * SLOT)

    def slot(self, tag: bytes) -> int:
        """The offset of a target's slot (claimed when new); -1 when the table is full."""
        memory = self.memory
        start = int.from_bytes(tag, "big") % SLOTS
        for step in range(SLOTS):
            offset = ((start + step) % SLOTS) * SLOT
            found = memory[offset : offset + 8]
            if found == tag:
                return offset
            if found == bytes(8):
                memory[offset : offset + 8] = tag
                return offset
        return -1

    def read(self, offset: int) -> int:
        return self.memory[offset + 8] if offset >= 0 else UNKNOWN

    def write(self, offset: int, verdict: int) -> None:
        if offset >= 0:
            self.memory[offset + 8] = verdict


def target_tag(host: Host, settings: ActiveHealth) -> bytes:
    """A target's name in the table: its upstream, address and probe settings."""
    text = repr((host.upstream, host.label, settings))
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


class Prober:
    """The probes of one target (in worker 0): a Task that runs while a config names it."""

    def __init__(self, host: Host, settings: ActiveHealth, table: HealthTable) -> None:
        self.host = host
        self.settings = settings
        self.table = table
        self.offset = table.slot(target_tag(host, settings))
        if table.read(self.offset) == UNKNOWN:
            first = HEALTHY if settings.initial == "healthy" else UNHEALTHY
            table.write(self.offset, first)
        scheme = "https" if host.tls else "http"
        authority = f"[{host.address}]" if ":" in host.address else host.address
        self.url = f"{scheme}://{authority}:{host.port}{settings.path}"
        self.headers = [("Host", settings.host)] if settings.host else []
        self.task = host.loop.create_task(self.run())

    async def run(self) -> None:
        settings = self.settings
        passes = failures = 0
        while True:
            await asyncio.sleep(settings.interval)
            why = await self.probe()
            verdict = self.table.read(self.offset)
            if why is None:
                passes, failures = passes + 1, 0
                if verdict != HEALTHY and passes >= settings.healthy:
                    self.decide(HEALTHY, f"{passes} probes passed")
            else:
                passes, failures = 0, failures + 1
                if verdict != UNHEALTHY and failures >= settings.unhealthy:
                    self.decide(UNHEALTHY, f"{failures} probes failed, the last: {why}")

    async def probe(self) -> str | None:
        """None when the target passes, else why not."""
        try:
            status, _ = await fetch(
                self.url,
                headers=self.headers,
                timeout=self.settings.timeout,
                tls=self.host.tls,
            )
        except OutboundError as error:
            return str(error)
        if status not in self.settings.expect_status:
            return f"status {status}"
        return None

    def decide(self, verdict: int, reason: str) -> None:
        self.table.write(self.offset, verdict)
        word = "healthy" if verdict == HEALTHY else "unhealthy"
        log.warning(
            "upstream %s: target %s %s (%s)", self.host.upstream, self.host.label, word, reason
        )

    def close(self) -> None:
        self.task.cancel()


class Verdicts:
    """A worker's view of the verdicts: every POLL seconds, the live clusters' targets with
    active health take theirs, and a cluster whose targets changed rebuilds its rotation."""

    def __init__(self, loop: asyncio.AbstractEventLoop, table: HealthTable) -> None:
        self.loop = loop
        self.table = table
        # (target, its slot, healthy until a verdict says otherwise, its cluster)
        self.watched: list[tuple[Host, int, bool, Cluster]] = []
        self.timer: Any = None

    def follow(self, clusters: list[Cluster]) -> None:
        """A new config: the targets to follow (and their verdicts, at once)."""
        self.close()
        self.watched = [
            (host, self.table.slot(target_tag(host, active)), active.initial == "healthy", cluster)
            for cluster in clusters
            if (active := cluster.upstream.health_check.active) is not None
            for host in cluster.hosts
        ]
        for cluster in clusters:
            if cluster.upstream.health_check.active is None:
                for host in cluster.hosts:
                    host.active_ok = True
        self.look()

    def look(self) -> None:
        self.timer = None
        changed = set()
        for host, offset, initial, cluster in self.watched:
            verdict = self.table.read(offset)
            healthy = verdict == HEALTHY or (verdict == UNKNOWN and initial)
            if healthy != host.active_ok:
                host.active_ok = healthy
                changed.add(cluster)
        for cluster in changed:
            cluster.rotate()
        if self.watched:
            self.timer = self.loop.call_later(POLL, self.look)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
