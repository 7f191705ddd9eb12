"""A fast fixed-response upstream that is never the bottleneck.

`python -m bench.upstream --port 9001 --size 64KiB [--status 200] [--delay 1ms | 1ms-5ms]
[--chunked]`: every request gets the same response (bodies of requests are read and dropped).
Responses up to 1 MiB are prebuilt bytes; larger ones stream from one block with flow control.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from typing import Any

import httptools
import uvloop

from fastgw.config.fields import Errors, duration, size

BLOCK = 1 << 20


class Response:
    """The response every request gets, built once."""

    def __init__(self, status: int, body_size: int, chunked: bool) -> None:
        self.size = body_size
        self.chunked = chunked
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % body_size
        self.head = b"HTTP/1.1 %d OK\r\nContent-Type: application/octet-stream\r\n%s\r\n\r\n" % (
            status,
            framing,
        )
        self.block = (
            (b"0123456789abcdef" * (BLOCK // 16))[: min(body_size, BLOCK)] if body_size else b""
        )
        self.whole = (
            self.head + self.frame(self.block) + (b"0\r\n\r\n" if chunked else b"")
            if body_size <= BLOCK
            else None
        )

    def frame(self, data: bytes) -> bytes:
        if not self.chunked or not data:
            return data
        return b"%x\r\n%s\r\n" % (len(data), data)


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, response: Response, delay: tuple[float, float]) -> None:
        self.response = response
        self.delay = delay
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.queue: list[bool] = []  # keep-alive flag of each request awaiting its answer
        self.task: asyncio.Future | None = None  # a large response being streamed
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        low, high = self.delay
        if high > 0:
            asyncio.get_running_loop().call_later(random.uniform(low, high), self.answer, keep)
        elif self.response.whole is not None:
            self.answer(keep)
        else:
            self.task = asyncio.ensure_future(self.stream(keep))

    def answer(self, keep: bool) -> None:
        if self.transport.is_closing():
            return
        if self.response.whole is None:
            self.task = asyncio.ensure_future(self.stream(keep))
            return
        self.transport.write(self.response.whole)
        if not keep:
            self.transport.close()

    async def stream(self, keep: bool) -> None:
        response = self.response
        self.transport.write(response.head)
        left = response.size
        while left > 0 and not self.transport.is_closing():
            piece = response.block[: min(left, BLOCK)]
            self.transport.write(response.frame(piece))
            left -= len(piece)
            await self.writable.wait()
        if response.chunked:
            self.transport.write(b"0\r\n\r\n")
        if not keep:
            self.transport.close()


def parse_delay(text: str) -> tuple[float, float]:
    errors = Errors()
    low, _, high = text.partition("-")
    values = [duration(v, "--delay", errors) for v in (low, high or low)]
    if errors:
        raise argparse.ArgumentTypeError(errors.items[0])
    return values[0], values[1]


def parse_size(text: str) -> int:
    errors = Errors()
    value = size(text, "--size", errors)
    if errors:
        raise argparse.ArgumentTypeError(errors.items[0])
    return value


async def serve(host: str, port: int, response: Response, delay: tuple[float, float]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(response, delay), host, port, backlog=4096
    )
    print(f"bench upstream on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument(
        "--size", type=parse_size, default=12, help="body size: bytes or 64KiB, 100MiB"
    )
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument(
        "--delay", type=parse_delay, default=(0.0, 0.0), help="fixed (5ms) or a range (1ms-5ms)"
    )
    parser.add_argument("--chunked", action="store_true", help="chunked instead of Content-Length")
    args = parser.parse_args(argv)
    response = Response(args.status, args.size, args.chunked)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port, response, args.delay))


if __name__ == "__main__":
    main()
