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
import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
import uvloop
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from fastgw.config.loader import Loaded, validate
from fastgw.http.client import ClientProtocol
from fastgw.plugins.services import Services
from fastgw.runtime import compile_runtime
from fastgw.site import Site
from fastgw.upstream.host import Hosts
from fastgw.upstream.protocol import UpstreamProtocol
from fastgw.worker import Worker

REQUEST = (
    b"GET /api/users/42?full=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: application/json\r\nAccept-Encoding: gzip\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
    b"Date: Mon, 23 Nov 2026 00:00:00 GMT\r\nServer: upstream\r\n\r\nhello world\n"
)


API_KEY = "bench-key-0123456789abcdef"


@functools.cache
def signer() -> tuple[Any, str]:
    """An RSA key and the PEM file of its public half, made once and kept in the temp dir:
    key generation takes a random time, which would blur instruction counts between runs."""
    folder = Path(tempfile.gettempdir())
    private, public = folder / "fastgw-hotpath-rsa.key", folder / "fastgw-hotpath-rsa.pem"
    if private.exists() and public.exists():
        key = load_pem_private_key(private.read_bytes(), None)
    else:
        key = rsa.generate_private_key(65537, 2048)
        private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        public.write_bytes(
            key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
    return key, str(public)


def plugin_settings(plugin: str) -> dict:
    """The global plugins of each --plugin choice ("none": the same requests, no plugin)."""
    if plugin == "jwt-auth":
        return {"jwt-auth": {"algorithms": ["RS256"], "public_key_file": signer()[1]}}
    # Limits high enough never to refuse, keyed by client address.
    if plugin == "rate-limit":
        return {"rate-limit": {"limits": [{"rate": 1_000_000_000, "per": "1s"}], "key": "ip"}}
    if plugin == "quota":
        return {"quota": {"limit": 1_000_000_000, "per": "month", "key": "ip"}}
    if plugin == "concurrency-limit":
        return {"concurrency-limit": {"max": 1_000_000, "key": "ip"}}
    return {"key-auth": {}} if plugin == "key-auth" else {}


PLUGINS = ("none", "key-auth", "jwt-auth", "rate-limit", "quota", "concurrency-limit")


def with_credentials(request: bytes) -> bytes:
    """The request with an API key and a day-long RS256 token (the cached path of jwt-auth)."""
    now = int(time.time())
    token = jwt.encode({"sub": "bench", "iat": now, "exp": now + 86400}, signer()[0], "RS256")
    extra = f"apikey: {API_KEY}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    return request[:-2] + extra


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

    def get_write_buffer_size(self) -> int:
        return 0

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


# With --balancer: three targets, and what each balancer needs (a key for consistent_hash).
BALANCERS = {
    "round_robin": {},
    "least_conn": {},
    "consistent_hash": {"hash_on": "ip"},
    "ewma": {},
}
TARGETS = [{"url": f"http://127.0.0.1:{port}"} for port in (9001, 9002, 9003)]


def setup(
    routes: int,
    plugin: str | None = None,
    connections: int = 1,
    balancer: str | None = None,
    observe: bool = False,
) -> list[ClientProtocol]:
    """Client connections of one worker, each with an idle upstream connection in the pool
    (of each target, with --balancer)."""
    upstream: dict = {"targets": [{"url": "http://127.0.0.1:9001"}]}
    if balancer is not None:
        upstream = {"targets": TARGETS, "balancer": balancer, **BALANCERS[balancer]}
    config: dict = {
        "upstreams": {"up": upstream},
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
    if plugin is not None:
        config["consumers"] = [
            {"name": "bench", "key_auth": {"keys": [API_KEY]}, "jwt": {"subject": "bench"}}
        ]
        config["plugins"] = plugin_settings(plugin)
    if observe:  # metrics (on with an admin listener), the access log, trace propagation
        log = os.path.join(tempfile.gettempdir(), f"fastgw-hotpath-{os.getpid()}.log")
        config["server"] = {"admin": "127.0.0.1:9900", "access_log": log}
        config["tracing"] = {}
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(Loaded(validate(config), "hotpath", "-"), 1, 0, None)
    worker.loop = loop
    worker.hosts = Hosts(loop)
    site = Site(compile_runtime(worker.loaded.config, worker.hosts, Services(loop)))
    worker.sites = [site]
    targets = upstream["targets"]
    found = [worker.hosts.find("up", "127.0.0.1", int(t["url"][-4:])) for t in targets]
    clients = []
    for _ in range(connections):
        client = ClientProtocol(worker, site)
        client.connection_made(MemoryTransport())
        clients.append(client)
        for host in found:
            pooled = UpstreamProtocol(host)
            pooled.connection_made(MemoryTransport())
            host.release(pooled, loop.time())
    return clients


def run(
    count: int,
    routes: int,
    plugin: str | None = None,
    rounds: int = 5,
    balancer: str | None = None,
    observe: bool = False,
) -> float:
    """Microseconds per request, best of `rounds` rounds."""
    (client,) = setup(routes, plugin, balancer=balancer, observe=observe)
    upstream = client.worker.hosts.find("up", "127.0.0.1", 9001).idle[0]
    client_data = client.data_received
    upstream_data = upstream.data_received
    request = REQUEST if plugin is None else with_credentials(REQUEST)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        if balancer is None:
            for _ in range(count):
                client_data(request)
                upstream_data(RESPONSE)
        else:  # the response goes to whichever target the balancer chose
            for _ in range(count):
                client_data(request)
                client.current.conn.data_received(RESPONSE)
        best = min(best, (time.perf_counter() - started) / count * 1e6)
    assert client.transport.writes >= count
    assert client.current is None, "the exchange did not finish"
    return best


def paced(count: int, gap: float, burst: int) -> tuple[float, float]:
    """Median and p99 microseconds of a burst of `burst` requests, one per connection, after
    `gap` seconds of sleep: the shape of the `latency` scenario's load (h2load starts every
    connection's pacing timer at once, so requests arrive together), met the way a lightly
    loaded gateway meets it. All request halves run first, then all responses, as when the
    requests arrive before the worker wakes."""
    clients = setup(10, connections=burst)

    def one_burst() -> None:
        for client in clients:
            client.data_received(REQUEST)
        for client in clients:
            client.current.conn.data_received(RESPONSE)

    for _ in range(2000 // burst):  # warm up, as `run` does with its first rounds
        one_burst()
    times = []
    for _ in range(count):
        time.sleep(gap)
        started = time.perf_counter()
        one_burst()
        times.append((time.perf_counter() - started) * 1e6)
    assert all(client.current is None for client in clients), "an exchange did not finish"
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


# Request counts of the two callgrind runs; their difference cancels start-up and set-up.
INSTRUCTION_COUNTS = (1000, 3000)


def instructions(
    routes: int, plugin: str | None, balancer: str | None = None, observe: bool = False
) -> float:
    """Instructions per request: callgrind counts two runs of this module with different request
    counts; the difference over the extra requests is independent of the machine's load."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    if plugin is not None:
        signer()  # the key file is made once, outside the counted runs
    totals = []
    for count in INSTRUCTION_COUNTS:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.hotpath",
            "--count",
            str(count),
            "--rounds",
            "1",
            "--routes",
            str(routes),
        ]
        if plugin is not None:
            command += ["--plugin", plugin]
        if observe:
            command.append("--observe")
        if balancer is not None:
            command += ["--balancer", balancer]
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if found is None:
            raise SystemExit(f"no instruction count in callgrind's output:\n{done.stderr}")
        totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) / (INSTRUCTION_COUNTS[1] - INSTRUCTION_COUNTS[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (the best counts)")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request with callgrind (steady on a noisy machine)",
    )
    parser.add_argument("--routes", type=int, default=10)
    parser.add_argument(
        "--plugin",
        choices=PLUGINS,
        help="a global plugin; every request then carries an API key and an RS256 JWT",
    )
    parser.add_argument(
        "--balancer",
        choices=tuple(BALANCERS),
        help="three targets behind this balancer (the response comes from the chosen one)",
    )
    parser.add_argument(
        "--observe",
        action="store_true",
        help="metrics, an access log (to a file in the temp directory) and tracing on",
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds of sleep before each burst (e.g. 0.005): median and p99 per burst",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=1,
        help="with --gap: requests per burst, each on its own connection (default 1)",
    )
    args = parser.parse_args()
    if args.gap:
        median, p99 = paced(min(args.count, 1000), args.gap, args.burst)
        print(
            f"{args.burst} request(s) after {args.gap * 1000:g} ms idle: "
            f"median {median:.1f} us, p99 {p99:.1f} us"
        )
        return
    if args.instructions:
        count = instructions(args.routes, args.plugin, args.balancer, args.observe)
        print(f"{count:,.0f} instructions per proxied request ({describe(args)})")
        return
    micros = run(args.count, args.routes, args.plugin, args.rounds, args.balancer, args.observe)
    print(f"{micros:.2f} us of Python per proxied request ({describe(args)})")


def describe(args: argparse.Namespace) -> str:
    return ", ".join(
        [f"{args.routes} routes"]
        + [
            part
            for part in (
                args.plugin,
                args.balancer and f"balancer {args.balancer}",
                args.observe and "metrics, access log, tracing",
            )
            if part
        ]
    )


if __name__ == "__main__":
    main()
