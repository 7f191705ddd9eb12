"""In-process harness: the real ClientProtocol, Exchange, Host and UpstreamProtocol over fake
transports, on a fake loop whose clock only moves when a test says so (uvicorn's and h11's
style). Dials wait until the test completes or fails them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from typing import Any

import h11

from fastgw.config.loader import validate
from fastgw.http.client import ClientProtocol
from fastgw.plugins.services import Services
from fastgw.runtime import compile_runtime
from fastgw.site import Site
from fastgw.upstream.host import Host, Hosts
from fastgw.upstream.protocol import UpstreamProtocol


class FakeTimer:
    def __init__(self, when: float, callback: Any, args: tuple) -> None:
        self.due = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def when(self) -> float:
        return self.due


class Dial:
    """A connection being opened: the test decides how it ends (a loop task stand-in)."""

    def __init__(self, loop: FakeLoop, factory: Any, host: str, port: int, ssl: Any) -> None:
        self.loop = loop
        self.factory = factory
        self.address = (host, port)
        self.ssl = ssl
        self.callbacks: list[Any] = []
        self.outcome: Any = None  # ("ok", (transport, protocol)) | ("error", exc) | ("cancelled",)

    # The asyncio.Task surface Host.dial uses.
    def add_done_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def cancel(self) -> None:
        if self.outcome is None:
            self._finish(("cancelled",))

    def cancelled(self) -> bool:
        return self.outcome[0] == "cancelled"

    def exception(self) -> BaseException | None:
        return self.outcome[1] if self.outcome[0] == "error" else None

    def result(self) -> tuple[Any, Any]:
        return self.outcome[1]

    # What the test does.
    def succeed(self) -> tuple[UpstreamProtocol, FakeTransport]:
        protocol = self.factory()
        transport = FakeTransport(self.loop, protocol)
        protocol.connection_made(transport)
        self._finish(("ok", (transport, protocol)))
        return protocol, transport

    def fail(self, exc: BaseException) -> None:
        self._finish(("error", exc))

    def _finish(self, outcome: Any) -> None:
        self.outcome = outcome
        self.loop.dials.remove(self)
        for callback in self.callbacks:
            callback(self)


class FakeLoop:
    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, int, FakeTimer]] = []
        self.order = itertools.count()
        self.ready: deque[tuple[Any, tuple]] = deque()
        self.dials: list[Dial] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any, *args: Any) -> FakeTimer:
        timer = FakeTimer(when, callback, args)
        heapq.heappush(self.timers, (when, next(self.order), timer))
        return timer

    def call_later(self, delay: float, callback: Any, *args: Any) -> FakeTimer:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> None:
        self.ready.append((callback, args))

    def create_future(self) -> asyncio.Future:
        return asyncio.Future(loop=self)  # type: ignore[arg-type]

    def get_debug(self) -> bool:
        return False

    def create_connection(
        self, factory: Any, host: str, port: int, ssl: Any = None, server_hostname: Any = None
    ) -> Dial:
        dial = Dial(self, factory, host, port, ssl)
        self.dials.append(dial)
        return dial

    def create_task(self, awaitable: Any) -> Any:
        if isinstance(awaitable, Dial):
            return awaitable
        raise AssertionError("an unexpected task in an in-process test")

    def run_ready(self) -> None:
        while self.ready:
            callback, args = self.ready.popleft()
            callback(*args)

    def advance(self, seconds: float) -> None:
        """Move the clock, running every timer that falls due on the way, in order."""
        end = self.now + seconds
        self.run_ready()
        while self.timers and self.timers[0][0] <= end:
            when, _, timer = heapq.heappop(self.timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            timer.callback(*timer.args)
            self.run_ready()
        self.now = end
        self.run_ready()


class FakeTransport:
    """Keeps what is written; close and abort call connection_lost soon, as asyncio does."""

    def __init__(self, loop: FakeLoop, protocol: Any) -> None:
        self.loop = loop
        self.protocol = protocol
        self.data = bytearray()
        self.writes = 0
        self.closing = False
        self.aborted = False
        self.reading = True
        self.buffer = 0  # what get_write_buffer_size reports
        self.linger_reset = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.writes += 1
        self.data += data

    def writelines(self, pieces: list[bytes]) -> None:
        self.write(b"".join(pieces))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffer

    def get_extra_info(self, name: str) -> Any:
        if name == "peername":
            return ("127.0.0.1", 40000)
        if name == "socket":
            return _Socket(self)
        return None

    def take(self) -> bytes:
        data = bytes(self.data)
        self.data.clear()
        return data


class _Socket:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        import socket

        if option == socket.SO_LINGER:
            self.transport.linger_reset = True


class Serving:
    """The worker side a ClientProtocol needs."""

    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.connections: set[Any] = set()
        self.draining = False
        self.ids = itertools.count(1)

    def next_request_id(self) -> bytes:
        return b"req-%d" % next(self.ids)


def config(
    read: str = "5s", targets: tuple[str, ...] = ("10.0.0.1", "10.0.0.2"), **upstream: Any
) -> dict:
    return {
        "server": {"timeouts": {"client_body": "20s", "send": "30s"}},
        "upstreams": {
            "up": {
                "targets": [{"url": f"http://{address}:80"} for address in targets],
                "timeouts": {"read": read, "connect": "2s"},
                **upstream,
            }
        },
        "routes": [{"name": "all", "match": {"paths": ["/*"]}, "upstream": "up"}],
    }


class Gateway:
    """One worker's data plane on a fake loop."""

    def __init__(self, settings: dict | None = None) -> None:
        self.loop = FakeLoop()
        self.serving = Serving(self.loop)
        self.hosts = Hosts(self.loop)  # type: ignore[arg-type]
        self.wall = 1_780_000_000.0  # the wall clock of calendar windows, set by tests
        self.site = Site(self.compile(settings or config()))
        self.ended: list[tuple[Host, str, float, float, float]] = []

    def compile(self, settings: dict) -> Any:
        services = self.services = Services(self.loop)  # type: ignore[arg-type]
        services.clock = self.loop.time
        services.wall_clock = lambda: self.wall
        return compile_runtime(validate(settings), self.hosts, services)

    def reload(self, settings: dict) -> None:
        self.site.runtime = self.compile(settings)

    def client(self) -> tuple[ClientProtocol, FakeTransport]:
        protocol = ClientProtocol(self.serving, self.site)  # type: ignore[arg-type]
        transport = FakeTransport(self.loop, protocol)
        protocol.connection_made(transport)
        return protocol, transport

    def host(self, address: str = "10.0.0.1") -> Host:
        found = self.hosts.find("up", address, 80)
        assert found is not None
        return found

    def pooled(self, address: str = "10.0.0.1") -> tuple[UpstreamProtocol, FakeTransport]:
        """An idle connection in a host's pool, as if an earlier request had used it."""
        host = self.host(address)
        protocol = UpstreamProtocol(host)
        transport = FakeTransport(self.loop, protocol)
        protocol.connection_made(transport)
        host.release(protocol, self.loop.now)
        return protocol, transport

    def dial(self) -> Dial:
        assert len(self.loop.dials) == 1, f"expected one dial, found {len(self.loop.dials)}"
        return self.loop.dials[0]


def response(status: int = 200, body: bytes = b"hello", headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), headers, body)


def parse_response(data: bytes, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one complete response, by h11 (strict)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    status, headers, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode().lower(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, body
        else:
            raise AssertionError(f"incomplete response: {event!r} after {data!r}")
