"""A tiny echo upstream for the demo: answers every request with what it received, as JSON."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httptools
import orjson
import uvloop

log = logging.getLogger("fastgw.demo")


class EchoProtocol(asyncio.Protocol):
    """One connection to the echo server; keep-alive, any body, answers in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_size = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        body = orjson.dumps(
            {
                "method": self.parser.get_method().decode(),
                "url": self.url.decode("latin-1"),
                "headers": {n.decode("latin-1"): v.decode("latin-1") for n, v in self.headers},
                "body_bytes": self.body_size,
            },
            option=orjson.OPT_INDENT_2,
        )
        keep = self.parser.should_keep_alive()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s\n"
            % (len(body) + 1, b"" if keep else b"Connection: close\r\n", body)
        )
        if not keep:
            self.transport.close()


async def serve_echo(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, host, port)
    log.info("echo upstream listening on %s:%d", host, port)
    async with server:
        await server.serve_forever()


def run_echo(host: str, port: int) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve_echo(host, port))
