"""One worker process: a uvloop event loop serving the listeners with the live Runtime.

The worker accepts on the listening sockets the master bound (inherited), takes new configs
from the supervisor over a pipe (already validated there), and drains on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import binascii
import gc
import hmac
import logging
import os
import pickle
import signal
import socket
import struct
import time
from base64 import b64decode
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
import uvloop

from .acceptor import Acceptor
from .admin import config_json, route_table
from .config.loader import ConfigError, Loaded, load
from .config.schema import Listener
from .heartbeat import EVERY as HEARTBEAT_EVERY
from .heartbeat import Heartbeats
from .http.client import ClientProtocol
from .http.replies import error_body
from .plugins.registry import import_modules
from .plugins.services import Services, SharedState
from .runtime import LocalHandler, compile_runtime, local_runtime
from .site import Site
from .tls import ServerTls, TlsListener
from .upstream.host import Hosts

# Request ids formatted at once (see Worker.next_request_id).
REQUEST_ID_BATCH = 256

log = logging.getLogger("fastgw.worker")

FRAME = struct.Struct("!I")


def encode_config(loaded: Loaded, version: int) -> bytes:
    """A frame for a worker: the plugin modules the config needs first (a plugin file's
    classes cannot be unpickled before the worker has imported it), then the config."""
    modules = (loaded.config.server.plugin_modules, str(Path(loaded.source).parent))
    payload = pickle.dumps((modules, pickle.dumps((loaded, version))))
    return FRAME.pack(len(payload)) + payload


def decode_config(payload: bytes) -> tuple[Loaded, int]:
    (names, base), inner = pickle.loads(payload)
    for problem in import_modules(names, Path(base)):
        log.error("%s", problem)
    return pickle.loads(inner)


RELOAD_WAIT = 10.0  # seconds POST /reload waits for this worker to serve the new config

# The dashboard page of the admin listener (`GET /`): static, it reads /stats itself.
DASHBOARD = files("fastgw.observe").joinpath("dashboard.html").read_bytes()

# A listening socket from the master and the listener it was bound for (at the master's start).
Bound = tuple[Listener, socket.socket]


class Worker:
    def __init__(
        self,
        loaded: Loaded,
        version: int,
        index: int,
        control_fd: int | None,
        listeners: list[Bound] | None = None,
        admin: socket.socket | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self.loaded = loaded
        self.shared = shared
        self.listeners = listeners or []
        self.admin_sock = admin
        self.version = version
        self.index = index
        self.control_fd = control_fd
        self.control_buffer = b""
        self.loop: Any = None
        self.hosts: Hosts | None = None
        self.services: Services | None = None
        self.connections: set[ClientProtocol] = set()
        self.draining = False
        self.acceptors: list[Acceptor] = []  # of the listeners (the admin's is apart)
        self.admin_acceptor: Acceptor | None = None  # open until the drain ends
        self.stopped: asyncio.Future | None = None
        self.request_prefix = os.urandom(6).hex().encode() + b"-"
        self.request_count = 0
        self.request_ids: list[bytes] = []  # formatted ahead, the next one last
        self.sites: list[tuple[tuple[str, int], Site]] = []  # (address, site) per listener

    def next_request_id(self) -> bytes:
        # PERF: a per-worker random prefix and a counter: unique without uuid4's cost. Ids are
        # formatted REQUEST_ID_BATCH at a time (warm, in one loop): a request only pops one.
        ids = self.request_ids
        if not ids:
            first = self.request_count + 1
            self.request_count += REQUEST_ID_BATCH
            prefix = self.request_prefix
            ids = self.request_ids = [
                prefix + b"%x" % n for n in range(self.request_count, first - 1, -1)
            ]
        return ids.pop()

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        breakers = self.shared.breakers if self.shared is not None else None
        self.hosts = Hosts(self.loop, breakers, self.index)
        self.services = Services(self.loop, self.shared, self.index)
        metrics = self.services.metrics
        metrics.connections = self.connections
        metrics.appenders = self.services.appenders
        metrics.exporters = self.services.exporters
        metrics.version = (self.version, self.loaded.digest)
        self.stopped = self.loop.create_future()
        config = self.loaded.config
        runtime = compile_runtime(config, self.hosts, self.services)
        live = {listener.address: listener for listener in config.server.listen}
        for bound_for, sock in self.listeners:
            tls = None
            if bound_for.tls is not None:
                # The live config's certificates when it still has this TLS listener.
                now = live.get(bound_for.address)
                tls = TlsListener(now.tls if now is not None and now.tls else bound_for.tls)
            site = Site(runtime, bound_for.scheme, tls)
            self.sites.append((bound_for.address, site))
            self.acceptors.append(
                Acceptor(
                    self.loop,
                    sock,
                    lambda site=site: ClientProtocol(self, site),
                    tls.context if tls is not None else None,
                    config.server.timeouts.client_header,
                )
            )
        settle_heap()
        if self.admin_sock is not None:
            admin = Site(
                local_runtime(self.admin_handlers(), config.server.limits, config.server.timeouts),
                admin=True,
            )
            self.admin_acceptor = Acceptor(
                self.loop, self.admin_sock, lambda: ClientProtocol(self, admin)
            )
            self.admin_acceptor.start()
        for acceptor in self.acceptors:
            acceptor.start()
        if self.shared is not None and self.shared.heartbeats is not None:
            self.beat(self.shared.heartbeats)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.drain)
        self.loop.add_signal_handler(signal.SIGUSR1, self.services.reopen)
        if self.control_fd is not None:
            os.set_blocking(self.control_fd, False)
            self.loop.add_reader(self.control_fd, self.read_control)
        log.info(
            "worker %d (pid %d) serving config version %d (%s)",
            self.index,
            os.getpid(),
            self.version,
            self.loaded.digest,
        )
        await self.stopped
        self.services.close()

    def beat(self, heartbeats: Heartbeats) -> None:
        """The loop is alive and serves this version (for the master's READY and watchdog)."""
        heartbeats.beat(self.index, self.version)
        self.loop.call_later(HEARTBEAT_EVERY, self.beat, heartbeats)

    def admin_handlers(self) -> dict[str, Any]:
        def healthz(_exchange: Any) -> tuple[int, bytes, bytes]:
            return 200, b"application/json", b'{"status":"ok"}'

        def readyz(_exchange: Any) -> tuple[int, bytes, bytes]:
            body = {
                "status": "draining" if self.draining else "ready",
                "config_version": self.version,
            }
            return (503 if self.draining else 200), b"application/json", orjson.dumps(body)

        def metrics(_exchange: Any) -> tuple[int, bytes, bytes]:
            body, content_type = self.services.metrics.scrape()
            return 200, content_type, body

        def stats(_exchange: Any) -> tuple[int, bytes, bytes]:
            uptime = time.time() - self.services.started
            report = self.services.stats.report(self.services.metrics.version, uptime)
            return 200, b"application/json", orjson.dumps(report)

        def dashboard(_exchange: Any) -> tuple[int, bytes, bytes]:
            return 200, b"text/html; charset=utf-8", DASHBOARD

        def config(_exchange: Any) -> tuple[int, bytes, bytes]:
            return 200, b"application/json", orjson.dumps(config_json(self.loaded))

        def routes(_exchange: Any) -> tuple[int, bytes, bytes]:
            return 200, b"application/json", orjson.dumps(route_table(self.loaded))

        def upstreams(_exchange: Any) -> tuple[int, bytes, bytes]:
            report = self.services.metrics.upstream_report()
            return 200, b"application/json", orjson.dumps(report)

        def purge(exchange: Any) -> tuple[int, bytes, bytes]:
            body = error_body(501, "response caching is not built yet", exchange.request_id)
            return 501, b"application/json", body

        return {
            "/healthz": healthz,
            "/readyz": readyz,
            "/metrics": self.guarded(metrics),
            "/stats": self.guarded(stats),
            "/config": self.guarded(config),
            "/routes": self.guarded(routes),
            "/upstreams": self.guarded(upstreams),
            "POST /reload": self.guarded(self.reload_requested),
            "POST /cache/purge": self.guarded(purge),  # reserved for response caching
            # A browser asks for the token as a password (Basic) and sends it to /stats too.
            "/": self.guarded(dashboard, b'WWW-Authenticate: Basic realm="fastgw"\r\n'),
        }

    async def reload_requested(self, _exchange: Any) -> tuple[int, bytes, bytes]:
        """POST /reload: the file is validated here first (400 with every error, the old
        config still serving); a valid one is reloaded by the master, as on SIGHUP, and the
        answer waits until this worker serves it."""
        path = self.loaded.source
        try:
            loaded = await self.loop.run_in_executor(None, load, path)
        except ConfigError as exc:
            errors = [
                {"path": path_, "message": message}
                for path_, _, message in (e.partition(": ") for e in exc.errors)
            ]
            body = {"error": "the config is not valid", "version": self.version, "errors": errors}
            return 400, b"application/json", orjson.dumps(body)
        before = self.version
        os.kill(os.getppid(), signal.SIGHUP)
        deadline = self.loop.time() + RELOAD_WAIT
        while self.version == before and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.version == before:
            body = {"error": "the master did not confirm the reload", "version": before}
            return 503, b"application/json", orjson.dumps(body)
        body = {
            "version": self.version,
            "digest": self.loaded.digest,
            "warnings": list(loaded.warnings),
        }
        return 200, b"application/json", orjson.dumps(body)

    def guarded(
        self,
        handler: LocalHandler,
        challenge: bytes = b'WWW-Authenticate: Bearer realm="fastgw"\r\n',
    ) -> LocalHandler:
        """With `server.admin.token`: the handler answers only `Authorization: Bearer TOKEN`
        (or Basic with TOKEN as the password, for browsers), with the token of the live
        config: a reload may change it."""

        def check(exchange: Any) -> tuple:
            admin = self.loaded.config.server.admin
            token = admin.token if admin is not None else None
            if token is not None and not token_matches(exchange.fwd, token):
                body = error_body(401, "admin token required", exchange.request_id)
                return 401, b"application/json", body, challenge
            return handler(exchange)

        return check

    def read_control(self) -> None:
        """Frames from the supervisor: a new validated config to switch to."""
        try:
            data = os.read(self.control_fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            log.warning("worker %d: supervisor is gone; draining", self.index)
            self.loop.remove_reader(self.control_fd)
            self.drain()
            return
        self.control_buffer += data
        while len(self.control_buffer) >= FRAME.size:
            (size,) = FRAME.unpack_from(self.control_buffer)
            if len(self.control_buffer) < FRAME.size + size:
                break
            payload = self.control_buffer[FRAME.size : FRAME.size + size]
            self.control_buffer = self.control_buffer[FRAME.size + size :]
            loaded, version = decode_config(payload)
            self.apply(loaded, version)

    def apply(self, loaded: Loaded, version: int) -> None:
        """Switch to a new config: one reference swap; requests in flight keep their runtime."""
        try:
            runtime = compile_runtime(loaded.config, self.hosts, self.services)
            self.reload_tls(loaded.config.server.listen)
        except Exception:
            log.exception(
                "worker %d: could not apply config version %d; keeping %d",
                self.index,
                version,
                self.version,
            )
            return
        if self.sites:
            self.sites[0][1].runtime.close()
        for _, site in self.sites:
            site.runtime = runtime
        self.loaded = loaded
        self.version = version
        self.services.metrics.version = (version, loaded.digest)
        settle_heap()
        log.info(
            "worker %d (pid %d) config version %d (%s) live",
            self.index,
            os.getpid(),
            version,
            loaded.digest,
        )

    def reload_tls(self, listeners: tuple[Any, ...]) -> None:
        """New certificates (and client CAs) for listeners that keep TLS; all or none switch."""
        by_address = {listener.address: listener for listener in listeners}
        staged = []
        for address, site in self.sites:
            new = by_address.get(address)
            if site.tls is not None and new is not None and new.tls is not None:
                staged.append((site.tls, ServerTls(new.tls)))
        for holder, contexts in staged:
            holder.current = contexts

    def drain(self) -> None:
        """Stop accepting, let requests in flight finish up to the drain deadline, then stop.
        The admin listener keeps answering (`/readyz`: 503) until then."""
        if self.draining:
            return
        self.draining = True
        for acceptor in self.acceptors:
            acceptor.stop()
        for conn in list(self.connections):
            conn.draining = True
            conn.close_if_idle()
        deadline = self.loop.time() + self.loaded.config.server.timeouts.drain
        log.info("worker %d draining %d connection(s)", self.index, len(self.connections))
        self.loop.create_task(self._wait_drained(deadline))

    async def _wait_drained(self, deadline: float) -> None:
        while (
            self.connections or any(acceptor.pending for acceptor in self.acceptors)
        ) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        cut = sum(conn.busy() for conn in self.connections)
        if cut:
            log.warning("worker %d: %d requests cut at the drain deadline", self.index, cut)
        for conn in list(self.connections):
            conn.abort()
        self.hosts.close_all()
        if not self.stopped.done():
            self.stopped.set_result(None)


def settle_heap() -> None:
    """Move the config and everything built from it out of the cyclic GC's reach.

    PERF: a full collection walks every tracked object; with 10,000 routes that walk costs
    requests per second (bench `routes10k`). What is frozen is still freed by reference
    counting when a reload replaces it (the runtime holds no reference cycles).
    """
    gc.collect()
    gc.freeze()


def run_worker(
    loaded: Loaded,
    version: int,
    index: int,
    control_fd: int | None,
    listeners: list[Bound],
    admin: socket.socket | None,
    shared: SharedState,
) -> int:
    worker = Worker(loaded, version, index, control_fd, listeners, admin, shared)
    uvloop.run(worker.main())
    log.info("worker %d (pid %d) stopped", index, os.getpid())
    return 0


def token_matches(fields: list[bytes], token: str) -> bool:
    """Whether the request's Authorization field (among its forwarded fields: name, ": ",
    value, CRLF) is `Bearer TOKEN`, or Basic credentials whose password is TOKEN (any user
    name), compared in constant time."""
    for i in range(0, len(fields) - 2, 4):
        if fields[i].lower() == b"authorization":
            scheme, _, credentials = fields[i + 2].strip().partition(b" ")
            if scheme.lower() == b"basic":
                try:
                    credentials = b64decode(credentials, validate=True).partition(b":")[2]
                except binascii.Error:
                    return False
            elif scheme.lower() != b"bearer":
                return False
            return hmac.compare_digest(credentials.strip(), token.encode())
    return False
