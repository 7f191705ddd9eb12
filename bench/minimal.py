"""The yardstick: a feature-less HTTP/1.1 proxy on uvloop + httptools.

`python -m bench.minimal --port 8081 --upstream 9001`: parses each request, rebuilds the
request head (adding X-Forwarded-For), sends it on a pooled keep-alive upstream connection
and relays the response. No routing, limits, timeouts, error replies or anything else a
gateway needs: it shows what the architecture itself costs, so that fastgw's own share of a
figure can be told apart from uvloop's, httptools' and the kernel's (bench.run --minimal).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import httptools
import uvloop


def no_delay(transport: Any) -> None:
    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Upstream(asyncio.Protocol):
    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.client: Client | None = None
        self.fields: list[bytes] = []
        self.out: list[bytes] = []
        self.complete = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        no_delay(transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        client = self.client
        if self.out and client is not None:
            out, self.out = self.out, []
            client.transport.writelines(out)
        if self.complete:
            self.complete = False
            self.client = None
            self.pool.append(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        status = b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code()
        self.out.append(status + b"".join(self.fields) + b"\r\n")
        self.fields = []

    def on_body(self, data: bytes) -> None:
        self.out.append(data)

    def on_message_complete(self) -> None:
        self.complete = True


class Client(asyncio.Protocol):
    def __init__(self, upstream_port: int, pool: list[Upstream]) -> None:
        self.upstream_port = upstream_port
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.peer = b""
        self.url = b""
        self.fields: list[bytes] = []
        self.pending: list[bytes] = []
        self.upstream: Upstream | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        no_delay(transport)
        self.peer = transport.get_extra_info("peername")[0].encode()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        head = [self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n", *self.fields]
        head += (b"X-Forwarded-For: ", self.peer, b"\r\n\r\n")
        self.fields = []
        self.pending.append(b"".join(head))
        if self.pool:
            self.attach(self.pool.pop())
        else:
            asyncio.get_running_loop().create_task(self.dial())

    async def dial(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(
            lambda: Upstream(self.pool), "127.0.0.1", self.upstream_port
        )
        self.attach(upstream)

    def attach(self, upstream: Upstream) -> None:
        self.upstream = upstream
        upstream.client = self
        upstream.transport.writelines(self.pending)
        self.pending = []

    def on_body(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.transport.write(data)
        else:
            self.pending.append(data)

    def on_message_complete(self) -> None:
        self.upstream = None


async def serve(port: int, upstream_port: int) -> None:
    pool: list[Upstream] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream_port, pool), "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
