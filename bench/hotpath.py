"""The Python cost of one proxied request, without sockets: `python -m bench.hotpath`.

The real ClientProtocol, Exchange and UpstreamProtocol run against in-memory transports: a
request goes in on the client side, its head comes out on the upstream side, a response goes
in there and comes out to the client. What is timed is exactly the gateway's own per-request
work (parsing callbacks, routing, head rewriting, pooling), without the kernel's share, so it
is steady enough to compare a change before and after on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvloop

from fastgw.config.loader import Loaded, validate
from fastgw.http.client import ClientProtocol
from fastgw.plugins.services import Services
from fastgw.runtime import compile_runtime
from fastgw.upstream.pool import Registry
from fastgw.upstream.protocol import UpstreamProtocol
from fastgw.worker import Site, Worker

REQUEST = (
    b"GET /api/users/42?full=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: application/json\r\nAccept-Encoding: gzip\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
    b"Date: Mon, 23 Nov 2026 00:00:00 GMT\r\nServer: upstream\r\n\r\nhello world\n"
)


class MemoryTransport:
    """Just enough of a transport: keeps what is written, counts writes."""

    def __init__(self) -> None:
        self.writes = 0
        self.last: Any = None

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = data

    def writelines(self, data: list[bytes]) -> None:
        self.writes += 1
        self.last = data

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the hot path closed a connection")

    def abort(self) -> None:
        raise AssertionError("the hot path aborted a connection")

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None


def setup(routes: int) -> tuple[ClientProtocol, UpstreamProtocol]:
    config = {
        "upstreams": {"up": {"targets": [{"url": "http://127.0.0.1:9001"}]}},
        "routes": [
            {"name": f"r{i}", "match": {"paths": [f"/svc{i}/items/{{id}}"]}, "upstream": "up"}
            for i in range(routes - 2)
        ]
        + [
            {
                "name": "users",
                "match": {"paths": ["/api/users/{id}"], "methods": ["GET"]},
                "upstream": "up",
            },
            {"name": "api", "match": {"paths": ["/api/*"]}, "upstream": "up", "strip_prefix": True},
        ],
    }
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(Loaded(validate(config), "hotpath", "-"), 1, 0, None)
    worker.loop = loop
    worker.registry = Registry(loop)
    site = Site(compile_runtime(worker.loaded.config, worker.registry, Services(loop)))
    worker.sites = [site]
    client = ClientProtocol(worker, site)
    client.connection_made(MemoryTransport())
    endpoint = worker.registry.get(("127.0.0.1", 9001, None))
    upstream = UpstreamProtocol(endpoint)
    upstream.connection_made(MemoryTransport())
    endpoint.release(upstream, loop.time())
    return client, upstream


def run(count: int, routes: int) -> float:
    """Microseconds per request, best of 5 rounds."""
    client, upstream = setup(routes)
    client_data = client.data_received
    upstream_data = upstream.data_received
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            client_data(REQUEST)
            upstream_data(RESPONSE)
        best = min(best, (time.perf_counter() - started) / count * 1e6)
    assert client.transport.writes >= count and upstream.transport.writes >= count
    assert client.current is None, "the exchange did not finish"
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--routes", type=int, default=10)
    args = parser.parse_args()
    print(
        f"{run(args.count, args.routes):.2f} us of Python per proxied request ({args.routes} routes)"
    )


if __name__ == "__main__":
    main()
