"""Zero-downtime upgrade: SIGUSR2 to the master starts a new master from the installed code
on the same listening sockets.

The old master passes its listening sockets to the new one as inherited file descriptors
(`FASTGW_LISTENERS`: `host:port=fd;...`, as nginx does with its `NGINX` variable) and a pipe
(`FASTGW_UPGRADE_FD`) on which the new master writes `ready` once every one of its workers
serves. The sockets stay open in both processes, so a connection is never refused: until
then the old workers accept, afterwards the new ones. Then the old master drains its workers
and exits. A new master that exits, or is not ready within `READY_WAIT`, is stopped and the
old one serves on.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time

log = logging.getLogger("fastgw.upgrade")

LISTENERS = "FASTGW_LISTENERS"
READY_FD = "FASTGW_UPGRADE_FD"
READY_WAIT = 60.0  # seconds a new master may take to have every worker serving


def inherited() -> dict[tuple[str, int], socket.socket]:
    """The listening sockets an old master passed down, by address (the variable is removed,
    so that no later child sees it)."""
    found: dict[tuple[str, int], socket.socket] = {}
    for item in filter(None, os.environ.pop(LISTENERS, "").split(";")):
        address, _, fd = item.rpartition("=")
        host, _, port = address.rpartition(":")
        sock = socket.socket(fileno=int(fd))
        sock.setblocking(False)
        os.set_inheritable(sock.fileno(), False)
        found[(host.strip("[]"), int(port))] = sock
    return found


def tell_old_master() -> None:
    """This new master serves: the old one may drain and go."""
    fd = os.environ.pop(READY_FD, "")
    if fd.isdigit():
        try:
            os.write(int(fd), b"ready")
            os.close(int(fd))
        except OSError as exc:
            log.warning("upgrade: could not tell the old master: %s", exc.strerror)


class NewMaster:
    """The old master's view of the new master it started."""

    def __init__(self, sockets: list[tuple[tuple[str, int], socket.socket]]) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        listeners = ";".join(f"{host}:{port}={sock.fileno()}" for (host, port), sock in sockets)
        env = dict(os.environ, **{LISTENERS: listeners, READY_FD: str(write_fd)})
        passed = [write_fd, *(sock.fileno() for _, sock in sockets)]
        command = [sys.executable, "-m", "fastgw", *sys.argv[1:]]
        self.pid = os.fork()
        if self.pid == 0:  # the new master: the installed code, from the start
            try:
                for fd in passed:
                    os.set_inheritable(fd, True)
                os.execve(sys.executable, command, env)
            finally:
                os._exit(127)
        os.close(write_fd)
        self.read_fd = read_fd
        self.deadline = time.monotonic() + READY_WAIT
        self.outcome: str | None = None  # "ready", or why it failed

    def poll(self) -> str | None:
        """'ready', a reason it failed, or None while it starts."""
        if self.outcome is None:
            try:
                if os.read(self.read_fd, 16).startswith(b"ready"):
                    self.outcome = "ready"
            except BlockingIOError:
                pass
            if self.outcome is None and time.monotonic() > self.deadline:
                os.kill(self.pid, signal.SIGTERM)
                self.outcome = f"not ready within {READY_WAIT:g}s; stopped"
        return self.outcome

    def exited(self, why: str) -> None:
        """The new master's process ended (before it was ready, this is a failure)."""
        if self.outcome is None:
            self.outcome = f"it exited ({why})"

    def close(self) -> None:
        os.close(self.read_fd)
