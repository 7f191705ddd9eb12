"""Passive health (outlier detection): targets that keep failing leave the rotation for a while.

Judged at the completion point of every attempt (Host.attempt_ended), per worker, as nginx's
`max_fails` is: `max_failures` failures (the outcomes and upstream statuses in `on`) within
`window` eject the target for `ejection`, doubled on each consecutive ejection up to
`max_ejection`. Then it returns half-open: it is back in the rotation until one request is
sent to it, which decides (success: healthy again; failure: ejected for longer), and it is out
of the rotation while that request runs. `max_ejected_percent` of an upstream's targets at most
are out at once, so passive checks can never eject everything. Changes rebuild the cluster's
balancer (upstream/cluster.py): a request pays nothing for health it does not use.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from .outcomes import OK

if TYPE_CHECKING:
    from ..config.schema import PassiveHealth


class Host(Protocol):
    """What health needs of a host (upstream/host.py, which imports this module)."""

    upstream: str
    label: str
    loop: Any
    cluster: Any
    ewma: float

    def rotate(self) -> None: ...


log = logging.getLogger("fastgw.health")

HEALTHY, EJECTED, PROBATION, TRIAL = "healthy", "ejected", "probation", "trial"
IN_ROTATION = (HEALTHY, PROBATION)


class Passive:
    """One target's passive health in this worker."""

    __slots__ = (
        "ejections",
        "failures",
        "outcomes",
        "settings",
        "state",
        "statuses",
        "timer",
        "window_start",
    )

    def __init__(self, settings: PassiveHealth) -> None:
        self.settings = settings
        self.outcomes = frozenset(kind for kind in settings.on if isinstance(kind, str))
        self.statuses = frozenset(kind for kind in settings.on if isinstance(kind, int))
        self.state = HEALTHY
        self.failures = 0
        self.window_start = 0.0
        self.ejections = 0  # consecutive: each doubles the next ejection
        self.timer: Any = None

    def judge(self, host: Host, outcome: str, status: int, now: float) -> None:
        failed = outcome in self.outcomes or (outcome == OK and status in self.statuses)
        what = str(status) if outcome == OK else outcome
        if self.state == TRIAL:
            if failed:
                self.eject(host, now, f"its trial request failed ({what})")
            else:
                self.state = HEALTHY
                self.ejections = 0
                log.warning("upstream %s: target %s healthy again", host.upstream, host.label)
                host.rotate()
            return
        if not failed or self.state != HEALTHY:
            return  # an attempt that began before an ejection says nothing new
        settings = self.settings
        if now - self.window_start > settings.window:
            self.window_start = now
            self.failures = 0
        self.failures += 1
        if self.failures >= settings.max_failures:
            self.failures = 0
            reason = f"{settings.max_failures} failures in {settings.window:g}s (last: {what})"
            self.eject(host, now, reason)

    def eject(self, host: Host, now: float, reason: str) -> None:
        cluster = host.cluster
        if cluster is None or not cluster.may_eject(host, self.settings.max_ejected_percent):
            if self.state == TRIAL:  # keep it in rotation rather than exceed the limit
                self.state = HEALTHY
                host.rotate()
            return
        settings = self.settings
        seconds = min(settings.ejection * 2**self.ejections, settings.max_ejection)
        self.ejections += 1
        self.state = EJECTED
        self.timer = host.loop.call_at(now + seconds, self.readmit, host)
        log.warning(
            "upstream %s: target %s ejected for %gs: %s", host.upstream, host.label, seconds, reason
        )
        host.rotate()

    def readmit(self, host: Host) -> None:
        """The ejection is over: half-open, one request decides."""
        self.timer = None
        if self.state == EJECTED:
            self.state = PROBATION
            host.ewma = -1.0  # an ewma balancer starts it at the upstream's median
            log.warning("upstream %s: target %s back on trial", host.upstream, host.label)
            host.rotate()

    def trial_started(self, host: Host) -> None:
        """Its one trial request was sent: out of the rotation until it answers."""
        self.state = TRIAL
        host.rotate()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Guarded:
    """A cluster's balancer when its targets have passive health: a target on probation gets
    one request (its trial), then leaves the rotation until that request ends."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def pick(self, ex: Any = None, exclude: Any = None) -> Any:
        host = self.inner.pick(ex, exclude)
        if host is not None and host.health.state == PROBATION:
            host.health.trial_started(host)
        return host
