"""The master process: owns the listeners, starts workers, restarts crashed ones, reloads on
SIGHUP, drains on stop.

It binds every listener once, before any worker starts (listeners.py), and the workers inherit
the sockets. It runs no event loop: it blocks in `sigtimedwait` on the signals it handles. A
reload is validated here once; only a valid config is sent to the workers, each over its own
pipe, so every worker switches to exactly the config the master checked.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

from .concurrency import ConcurrencyTable
from .config.loader import ConfigError, Loaded, load
from .counters import WorkerCounters
from .heartbeat import STALE as HEARTBEAT_STALE
from .heartbeat import Heartbeats
from .listeners import ListenError, bind_all
from .notify import Notifier
from .observe.metrics import MetricsTables
from .plugins.services import SharedState
from .quotas import QuotaState, QuotaTable
from .shared import SharedTable
from .upgrade import NewMaster, inherited, tell_old_master
from .upstream.breaker import FIELDS as BREAKER_FIELDS
from .upstream.budget import FIELDS as BUDGET_FIELDS
from .upstream.probes import HealthTable
from .worker import Bound, encode_config, run_worker

log = logging.getLogger("fastgw.supervisor")

HANDLED = {
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGCHLD,
    signal.SIGUSR1,
    signal.SIGUSR2,
}
# A worker that dies sooner than this after starting counts as crash-looping.
FAST_CRASH = 1.0
MAX_BACKOFF = 10.0
FLUSH_EVERY = 1.0  # seconds between writes of the quota counts (when they changed)
# A worker just started may take this long to beat before the watchdog counts it as hung.
START_GRACE = 10.0
# After a reload, READY=1 is sent when every worker serves the new config, or after this.
RELOAD_CONFIRM = 10.0


@dataclass
class WorkerSlot:
    index: int
    pid: int = 0
    control: int = -1  # write end of the config pipe
    started: float = 0.0
    backoff: float = 0.0
    due: float = 0.0  # when a crashed worker may be restarted


def worker_count(setting: int | str) -> int:
    if setting == "auto":
        return len(os.sched_getaffinity(0)) or 1
    return int(setting)


class Supervisor:
    def __init__(
        self,
        path: str,
        loaded: Loaded,
        listeners: list[Bound],
        admin: socket.socket | None = None,
    ) -> None:
        self.path = path
        self.loaded = loaded
        self.listeners = listeners  # fixed for the master's lifetime, as are workers and admin
        self.admin = admin
        self.version = 1
        self.slots = [WorkerSlot(i) for i in range(worker_count(loaded.config.server.workers))]
        self.stopping = False
        # State the workers share, made before they fork; it outlives reloads and worker
        # restarts. Rate-limit buckets are locked only when there is more than one worker;
        # quota counts are also read by the master, which keeps them in server.state_dir.
        limits = loaded.config.server.limits
        self.shared = SharedState(
            SharedTable(limits.max_limit_keys, shared_lock=len(self.slots) > 1),
            QuotaTable(limits.max_quota_keys),
            ConcurrencyTable(limits.max_concurrency_keys, len(self.slots)),
            HealthTable(),
            WorkerCounters(BUDGET_FIELDS, len(self.slots)),
            WorkerCounters(BREAKER_FIELDS, len(self.slots)),
            MetricsTables.make(len(self.slots)),
            heartbeats=Heartbeats(len(self.slots)),
        )
        self.notifier = Notifier()
        self.awaiting: int | None = self.version  # READY=1 once every worker serves it
        self.awaiting_until = float("inf")
        self.successor: NewMaster | None = None  # the new master of an upgrade (SIGUSR2)
        self.quota_state = QuotaState(self.shared.quotas, loaded.config.server.state_dir)
        self.quota_state.load(time.time())
        self.flush_at = 0.0

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        log.info(
            "fastgw %s: config version %d (%s), %d worker(s), listening on %s",
            self.path,
            self.version,
            self.loaded.digest,
            len(self.slots),
            ", ".join(
                f"{h}:{p}" for h, p in (lst.address for lst in self.loaded.config.server.listen)
            ),
        )
        for slot in self.slots:
            self.spawn(slot)
        while True:
            info = signal.sigtimedwait(
                HANDLED, min(0.5, max(0.0, self.flush_at - time.monotonic()))
            )
            if info is not None:
                if info.si_signo == signal.SIGCHLD:
                    self.reap()
                elif info.si_signo == signal.SIGHUP and not self.stopping:
                    self.reload()
                elif info.si_signo == signal.SIGUSR1:
                    self.reopen_logs()
                elif info.si_signo == signal.SIGUSR2 and not self.stopping:
                    self.upgrade()
                elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    return self.stop()
            else:
                self.reap()
            self.restart_due()
            self.watch_workers()
            if self.successor is not None and self.successor_ready():
                return self.stop(handed_over=True)
            if time.monotonic() >= self.flush_at:
                self.quota_state.flush()
                self.flush_at = time.monotonic() + FLUSH_EVERY

    def status(self) -> str:
        workers = sum(1 for slot in self.slots if slot.pid)
        return f"config version {self.version} ({self.loaded.digest}), {workers} worker(s)"

    def upgrade(self) -> None:
        """SIGUSR2: start a new master from the installed code on the same sockets."""
        if self.successor is not None:
            log.warning("SIGUSR2: an upgrade is already under way (pid %d)", self.successor.pid)
            return
        self.quota_state.flush()  # the new master starts from the counts so far
        sockets = [(bound.address, sock) for bound, sock in self.listeners]
        if self.admin is not None:
            sockets.append((self.loaded.config.server.admin.address, self.admin))
        self.successor = NewMaster(sockets)
        log.info("SIGUSR2: upgrading: new master pid %d starting", self.successor.pid)

    def successor_ready(self) -> bool:
        """True once the new master serves; on its failure, this master serves on."""
        outcome = self.successor.poll()
        if outcome == "ready":
            log.info("upgrade: new master pid %d serves; draining this one", self.successor.pid)
            return True
        if outcome is not None:
            log.error(
                "upgrade failed: the new master (pid %d) %s; still serving config version %d",
                self.successor.pid,
                outcome,
                self.version,
            )
            self.successor.close()
            self.successor = None
        return False

    def watch_workers(self) -> None:
        """READY once every worker serves the awaited config (to systemd, and to an old
        master waiting for this new one); WATCHDOG=1 while all answer."""
        notifier = self.notifier
        now = time.monotonic()
        heartbeats = self.shared.heartbeats
        if self.awaiting is not None:
            serving = [
                heartbeats.serving(slot.index, slot.started) if slot.pid else 0
                for slot in self.slots
            ]
            late = sum(1 for version in serving if version < self.awaiting)
            if not late:
                notifier.ready(self.status())
                tell_old_master()
                self.awaiting = None
            elif now >= self.awaiting_until:
                notifier.ready(f"{self.status()}; {late} worker(s) did not confirm it")
                self.awaiting = None
        if (
            notifier.active
            and notifier.watchdog_due(now)
            and all(self.answering(slot, now) for slot in self.slots if slot.pid)
        ):
            notifier.watchdog(now)

    def answering(self, slot: WorkerSlot, now: float) -> bool:
        """A worker beat lately, or was started lately and has not beaten yet."""
        age = self.shared.heartbeats.age(slot.index, slot.started)
        if age is None:
            return now - slot.started < START_GRACE
        return age <= HEARTBEAT_STALE

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate): every worker opens its access log files again."""
        log.info("SIGUSR1: reopening the access logs")
        for slot in self.slots:
            if slot.pid:
                os.kill(slot.pid, signal.SIGUSR1)

    def spawn(self, slot: WorkerSlot) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(write_fd)
                for other in self.slots:
                    if other.control >= 0:
                        os.close(other.control)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until the worker handles it
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
                code = run_worker(
                    self.loaded,
                    self.version,
                    slot.index,
                    read_fd,
                    self.listeners,
                    self.admin,
                    self.shared,
                )
            except BaseException:
                log.exception("worker %d failed", slot.index)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(read_fd)
        slot.pid = pid
        slot.control = write_fd
        slot.started = time.monotonic()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self.slots:
                if slot.pid == pid:
                    self.worker_exited(slot, status)
            if self.successor is not None and pid == self.successor.pid:
                self.successor.exited(_describe_status(status))

    def worker_exited(self, slot: WorkerSlot, status: int) -> None:
        os.close(slot.control)
        slot.control = -1
        slot.pid = 0
        self.shared.concurrency.forget_worker(slot.index)  # what it held is free again
        self.shared.breakers.forget_worker(slot.index)
        self.shared.metrics.forget_worker(slot.index)
        if self.stopping:
            return
        lived = time.monotonic() - slot.started
        slot.backoff = min(MAX_BACKOFF, max(0.5, slot.backoff * 2)) if lived < FAST_CRASH else 0.0
        slot.due = time.monotonic() + slot.backoff
        log.error(
            "worker %d exited unexpectedly (%s); restarting%s",
            slot.index,
            _describe_status(status),
            f" in {slot.backoff:.1f}s" if slot.backoff else "",
        )

    def restart_due(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid == 0 and now >= slot.due:
                self.spawn(slot)

    def reload(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        self.notifier.reloading()
        try:
            loaded = load(self.path)
        except ConfigError as exc:
            self.shared.metrics.reloaded(False)
            self.notifier.ready(f"{self.status()}; the reload failed, this config kept")
            log.error(
                "reload failed; still serving config version %d (%s):\n%s",
                self.version,
                self.loaded.digest,
                "\n".join(f"  {e}" for e in exc.shown),
            )
            return
        warn(loaded)
        old = self.loaded.config.server
        new = loaded.config.server
        addresses = [(lst.address, lst.scheme) for lst in old.listen]
        fixed = ("workers", "state_dir")
        sizes = ("max_limit_keys", "max_quota_keys", "max_concurrency_keys")
        if (
            addresses != [(lst.address, lst.scheme) for lst in new.listen]
            or any(getattr(old, name) != getattr(new, name) for name in fixed)
            or (old.admin and old.admin.address) != (new.admin and new.admin.address)
            or any(getattr(old.limits, name) != getattr(new.limits, name) for name in sizes)
        ):
            log.warning(
                "changes to server.listen, server.workers, server.admin's address, server.state_dir "
                "and server.limits.max_limit_keys, max_quota_keys and max_concurrency_keys take "
                "effect after a restart"
            )
        self.loaded = loaded
        self.version += 1
        self.awaiting = self.version
        self.awaiting_until = time.monotonic() + RELOAD_CONFIRM
        self.shared.metrics.reloaded(True)
        frame = encode_config(loaded, self.version)
        for slot in self.slots:
            if slot.control >= 0:
                try:
                    os.write(slot.control, frame)
                except OSError as exc:
                    log.error("could not send the config to worker %d: %s", slot.index, exc)
        log.info(
            "config version %d (%s) sent to %d worker(s)",
            self.version,
            loaded.digest,
            len(self.slots),
        )

    def stop(self, handed_over: bool = False) -> int:
        """Drain the workers and exit; `handed_over`: a new master serves now (an upgrade),
        so systemd hears nothing from this one and the quota counts are its to keep."""
        self.stopping = True
        if not handed_over:
            self.notifier.stopping()
        deadline = time.monotonic() + self.loaded.config.server.timeouts.drain + 5.0
        log.info("stopping: draining workers")
        for slot in self.slots:
            if slot.pid:
                os.kill(slot.pid, signal.SIGTERM)
        while any(slot.pid for slot in self.slots):
            if time.monotonic() > deadline:
                for slot in self.slots:
                    if slot.pid:
                        log.error("worker %d did not stop in time; killing it", slot.index)
                        os.kill(slot.pid, signal.SIGKILL)
                deadline = float("inf")
            signal.sigtimedwait({signal.SIGCHLD}, 0.2)
            self.reap()
        if not handed_over:
            self.quota_state.flush()
        log.info("stopped" if not handed_over else "stopped: the new master serves")
        return 0


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def warn(loaded: Loaded) -> None:
    """A config that loads but is almost certainly wrong: say so (config/warnings.py)."""
    for warning in loaded.warnings:
        log.warning("config warning: %s", warning)


def serve(path: str) -> int:
    """`fastgw run`: load, bind the listeners, supervise until stopped."""
    try:
        loaded = load(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    warn(loaded)
    server = loaded.config.server
    addresses = [listener.address for listener in server.listen]
    if server.admin is not None:
        addresses.append(server.admin.address)
    try:
        sockets = bind_all(addresses, inherited())
    except ListenError as exc:
        for problem in str(exc).splitlines():
            log.error("%s", problem)
        return 1
    listeners = list(zip(server.listen, sockets, strict=False))
    admin = sockets[-1] if server.admin is not None else None
    return Supervisor(path, loaded, listeners, admin).run()
