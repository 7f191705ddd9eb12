"""Listening sockets, owned by the master: bound once, exclusively, inherited by every worker.

Without SO_REUSEPORT no other process can bind the same address while the gateway runs (as
with nginx): a second gateway, or a manual run beside the service, fails at start naming the
address and the process that holds it, instead of silently taking half of the connections.
The workers of one gateway share each socket; a worker restarted after a crash gets the same
sockets, so listeners change only with a restart of the master.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

BACKLOG = 2048
LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp


class ListenError(Exception):
    """An address could not be bound; the message names it and, if known, its holder."""


def bind(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A non-blocking listening socket that only this process (and its children) use."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart past TIME_WAIT
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        message = f"cannot listen on {host}:{port}: {exc.strerror}"
        if exc.errno == errno.EADDRINUSE:
            holder = holder_of(port)
            if holder:
                message += f" (held by {holder})"
        raise ListenError(message) from None
    return sock


def bind_all(
    addresses: list[tuple[str, int]], inherited: dict[tuple[str, int], socket.socket] | None = None
) -> list[socket.socket]:
    """Bind every address, or none: all the problems in one ListenError. An address an old
    master passed down (`inherited`, an upgrade) is taken as it is; the others it passed
    are closed."""
    inherited = dict(inherited or {})
    bound: list[socket.socket] = []
    problems: list[str] = []
    for host, port in addresses:
        sock = inherited.pop((host, port), None)
        if sock is not None:
            bound.append(sock)
            continue
        try:
            bound.append(bind(host, port))
        except ListenError as exc:
            problems.append(str(exc))
    for sock in inherited.values():
        sock.close()
    if problems:
        for sock in bound:
            sock.close()
        raise ListenError("\n".join(problems))
    return bound


def holder_of(port: int) -> str:
    """'pid N (command line)' of the process listening on a TCP port, or '' when unknown
    (another user's process, or no /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            listening = len(fields) > 9 and fields[3] == LISTEN_STATE
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return ""
    holders: dict[int, int] = {}  # pid -> parent pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                stat = (entry / "stat").read_text()
                holders[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except OSError:
            continue  # gone, or not ours to look at
    if not holders:
        return ""
    # The workers of a gateway hold the socket too: name the process whose parent does not.
    roots = [p for p, parent in holders.items() if parent not in holders]
    pid = min(roots or holders)
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
    except OSError:
        command = b""
    return f"pid {pid} ({command.decode(errors='replace')})" if command else f"pid {pid}"
