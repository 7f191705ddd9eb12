"""Acceptor: takes connections from a listening socket the master owns, in a worker's loop.

uvloop's own server accepts in libuv, and when the process runs out of file descriptors it
accepts and closes pending connections silently (or stops listening for good). Here accepting
is ours: out of descriptors, accepting pauses briefly (as nginx and asyncio do) so connections
wait in the kernel's backlog, and one rate-limited line names the limit.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from .http.replies import reply
from .logs import Throttled, open_file_limit

log = logging.getLogger("fastgw.worker")
out_of_descriptors = Throttled(log, 10.0)

# Connections accepted per wake-up: a few, so that a burst is taken in one go while the other
# workers, woken for the same socket, still get their share.
ACCEPT_BATCH = 8
# How long accepting pauses when the process is out of file descriptors.
PAUSE_WHEN_OUT = 0.5
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        factory: Callable[[], Any],
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.tls = tls
        self.handshake_timeout = handshake_timeout if tls is not None else None
        host, port = sock.getsockname()[:2]
        self.label = f"{host}:{port}"
        self.accepting = False
        self.resume_timer: Any = None
        # Accepted and not yet handed to a protocol (a drain waits for them too).
        self.pending = 0

    def start(self) -> None:
        if not self.accepting:
            self.accepting = True
            self.loop.add_reader(self.sock.fileno(), self._ready)

    def stop(self) -> None:
        """Stop accepting (draining); the socket stays open for the master and the others."""
        if self.resume_timer is not None:
            self.resume_timer.cancel()
            self.resume_timer = None
        if self.accepting:
            self.accepting = False
            self.loop.remove_reader(self.sock.fileno())

    def _ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker took it, or nothing left
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up before we accepted
                log.error("accept on %s failed: %s", self.label, exc)
                return
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending += 1
        if self.tls is not None:
            # Wait for the first byte: a TLS handshake, or plain HTTP sent to the wrong port.
            PlainOrTls(self, conn)
            return
        self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        # The protocol is made and connection_made runs within the call; the Task only waits
        # for the TLS handshake (or one loop turn without TLS). One per connection, not request.
        task = self.loop.create_task(
            self.loop.connect_accepted_socket(
                self.factory, conn, ssl=self.tls, ssl_handshake_timeout=self.handshake_timeout
            )
        )
        task.add_done_callback(self._made)

    def _made(self, task: Any) -> None:
        self.pending -= 1
        _handshake_done(task)

    def _pause(self, exc: OSError) -> None:
        self.stop()
        out_of_descriptors.error(
            "accept on %s: %s (open file limit %d): not accepting for %gs; raise the limit "
            "(LimitNOFILE, ulimit -n) or lower limits.max_connections",
            self.label,
            exc.strerror,
            open_file_limit(),
            PAUSE_WHEN_OUT,
        )
        self.resume_timer = self.loop.call_later(PAUSE_WHEN_OUT, self._resume)

    def _resume(self) -> None:
        self.resume_timer = None
        self.start()


TLS_HANDSHAKE = 0x16  # the content type of the first TLS record a client sends
PLAIN_HTTP_TO_TLS = b"400 Bad Request: a plain HTTP request was sent to a TLS port (https)\n"


class PlainOrTls:
    """A TLS listener's new connection until its first byte: a TLS record starts the
    handshake; anything else (a plain HTTP request) is answered 400 and closed, as nginx
    does, instead of a silent close. One callback per connection, none per request."""

    __slots__ = ("acceptor", "conn", "timer")

    def __init__(self, acceptor: Acceptor, conn: socket.socket) -> None:
        self.acceptor = acceptor
        self.conn = conn
        loop = acceptor.loop
        loop.add_reader(conn.fileno(), self.readable)
        self.timer = loop.call_later(acceptor.handshake_timeout or 60.0, self.timed_out)

    def readable(self) -> None:
        conn = self.conn
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return  # woken for nothing: wait on
        except OSError:
            first = b""
        self.done()
        if first[:1] == bytes((TLS_HANDSHAKE,)):
            self.acceptor._start(conn)
            return
        self.acceptor.pending -= 1
        if first:
            try:
                # Read what was sent first: closing with unread bytes would reset the
                # connection and the client might not see the answer.
                conn.recv(65536)
                conn.send(reply(400, PLAIN_HTTP_TO_TLS, content_type=b"text/plain", close=True))
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        conn.close()

    def timed_out(self) -> None:
        self.timer = None
        self.done()
        self.acceptor.pending -= 1
        self.conn.close()

    def done(self) -> None:
        self.acceptor.loop.remove_reader(self.conn.fileno())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _handshake_done(task: Any) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        # A failed or timed-out TLS handshake, or a client gone before it began: its business.
        log.debug("connection not established: %s: %s", type(exc).__name__, exc)
