"""systemd's notify protocol, spoken by the master over `NOTIFY_SOCKET` (sd_notify(3)).

One datagram per message on a Unix socket whose path systemd puts in the environment (an
abstract one when it starts with `@`); no library is needed. Without `NOTIFY_SOCKET` every
call does nothing. `WATCHDOG_USEC` (and `WATCHDOG_PID`, when set, naming this process) asks
for `WATCHDOG=1` at least that often: the master sends it at half the interval, and only
while every worker shows its heartbeat (a hung worker stops the pings, so systemd restarts
the service).
"""

from __future__ import annotations

import logging
import os
import socket
import time

from .logs import Throttled

log = logging.getLogger("fastgw.notify")
failures = Throttled(log, 60.0)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        self.sock: socket.socket | None = None
        if path:
            self.address = "\0" + path[1:] if path.startswith("@") else path
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Seconds between watchdog pings (half what systemd asked for); 0: no watchdog.
        self.watchdog_every = 0.0
        usec = env.get("WATCHDOG_USEC", "")
        watched_pid = env.get("WATCHDOG_PID", "")
        for_us = not watched_pid or watched_pid == str(os.getpid())
        if self.sock is not None and usec.isdigit() and int(usec) > 0 and for_us:
            self.watchdog_every = int(usec) / 2e6
        self.watchdog_at = 0.0  # when the next ping is due (time.monotonic)

    @property
    def active(self) -> bool:
        return self.sock is not None

    def send(self, *fields: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            failures.warning("systemd notify (%s): %s", self.address, exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: draining")

    def watchdog_due(self, now: float) -> bool:
        return self.watchdog_every > 0 and now >= self.watchdog_at

    def watchdog(self, now: float) -> None:
        self.send("WATCHDOG=1")
        self.watchdog_at = now + self.watchdog_every
