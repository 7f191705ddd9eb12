"""The built-in load generator, used when wrk or h2load is not installed: good for a smoke run.

`python -m bench.load --url http://127.0.0.1:8080/ --connections 64 --duration 5
[--method POST --body-size 4096] [--rps 2000]` prints one JSON line: requests, errors, seconds
and latency percentiles in microseconds. Without --rps each connection sends its next request
as soon as the answer arrives (closed loop); with --rps the requests are paced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httptools
import uvloop


class LoadProtocol(asyncio.Protocol):
    """One keep-alive connection sending the same request again and again."""

    def __init__(self, request: bytes, latencies: list[int], stats: dict[str, int]) -> None:
        self.request = request
        self.latencies = latencies
        self.stats = stats
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.sent_at = 0
        self.idle = asyncio.Event()
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.idle.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.idle.set()

    def send(self) -> None:
        self.idle.clear()
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.stats["errors"] += 1
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() >= 400:
            self.stats["errors"] += 1
        self.latencies.append((time.perf_counter_ns() - self.sent_at) // 1000)
        self.idle.set()


def percentile(sorted_values: list[int], p: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run(
    url: str,
    connections: int,
    duration: float,
    method: str,
    body_size: int,
    rps: float,
    headers: list[str] | None = None,
) -> dict:
    parts = urlsplit(url)
    body = b"x" * body_size
    request = (
        f"{method} {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode()
        + "".join(f"{line}\r\n" for line in headers or ()).encode()
        + (b"Content-Length: %d\r\n" % len(body) if body else b"")
        + b"\r\n"
        + body
    )
    latencies: list[int] = []
    stats = {"errors": 0}
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(connections):
        _, proto = await loop.create_connection(
            lambda: LoadProtocol(request, latencies, stats), parts.hostname, parts.port
        )
        conns.append(proto)
    started = time.perf_counter()
    deadline = started + duration

    async def closed_loop(conn: LoadProtocol) -> None:
        while time.perf_counter() < deadline and not conn.closed:
            conn.send()
            await conn.idle.wait()

    async def paced(conn: LoadProtocol, interval: float, offset: float) -> None:
        due = started + offset
        while due < deadline and not conn.closed:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await conn.idle.wait()
            conn.send()
            due += interval

    if rps > 0:
        interval = connections / rps
        tasks = [paced(c, interval, i * interval / connections) for i, c in enumerate(conns)]
    else:
        tasks = [closed_loop(c) for c in conns]
    await asyncio.gather(*tasks)
    await asyncio.gather(*(c.idle.wait() for c in conns))
    seconds = time.perf_counter() - started
    for conn in conns:
        conn.transport.close()
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": stats["errors"],
        "seconds": seconds,
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "p999": percentile(latencies, 99.9),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body-size", type=int, default=0)
    parser.add_argument("--rps", type=float, default=0.0, help="total requests per second (paced)")
    parser.add_argument(
        "--header", action="append", default=[], help="'Name: value', sent with every request"
    )
    args = parser.parse_args(argv)
    result = uvloop.run(
        run(
            args.url,
            args.connections,
            args.duration,
            args.method,
            args.body_size,
            args.rps,
            args.header,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
