"""Test support: real processes (gateway, upstream) and an h11 client to check the gateway.

h11 is a strict parser independent of the gateway's httptools: every response a test reads
through these helpers has been accepted by it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import yaml

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "servers" / "upstream.py"


def in_parallel(call, count: int, timeout: float = 30.0) -> list:
    """Run `call()` in `count` threads at once; the results, in completion order."""
    results: list = []

    def one() -> None:
        results.append(call())

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    condition, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll until `condition()` is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Upstream:
    """The test upstream (tests/servers/upstream.py) as a real process."""

    def __init__(self, port: int = 0, tls: tuple[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(UPSTREAM_SCRIPT), str(port), *(tls or ())],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("test upstream did not start")
        self.port = int(line)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: the process dies mid-request, its connections reset."""
        self.proc.kill()
        self.proc.wait(5)

    def stats(self) -> dict:
        return request(self.port, "GET", "/stats").json()


def base_config(upstream_url: str, **server: Any) -> dict:
    """A config with free ports, one upstream `up` and a catch-all route to it."""
    config = {
        "server": {
            "listen": f"127.0.0.1:{free_port()}",
            "admin": f"127.0.0.1:{free_port()}",
            "workers": 1,
            **server,
        },
        "upstreams": {"up": {"targets": [{"url": upstream_url}]}},
        "routes": [{"name": "all", "match": {"paths": ["/*"]}, "upstream": "up"}],
    }
    return config


class Gateway:
    """`python -m fastgw run -c FILE` as a real process, its stderr kept in a file."""

    def __init__(self, tmp_path: Path, config: dict, name: str = "fastgw.yaml") -> None:
        self.dir = tmp_path
        self.config_path = tmp_path / name
        self.log_path = tmp_path / f"{name}.log"
        self.write_config(config)
        self.config = config
        listen = config["server"]["listen"]
        first = listen[0] if isinstance(listen, list) else listen
        first = first["address"] if isinstance(first, dict) else first
        self.port = int(first.rsplit(":", 1)[1])
        admin = config["server"]["admin"]
        admin = admin["address"] if isinstance(admin, dict) else admin
        self.admin_port = int(admin.rsplit(":", 1)[1])
        self.proc: subprocess.Popen | None = None

    def write_config(self, config: dict) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))

    def start(
        self,
        wait: bool = True,
        nofile: int | None = None,
        options: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Gateway:
        """Run it; `nofile` sets its open file limit (as `ulimit -n`); `options` go before
        `run` (`--log-format json`); `env` is added to its environment."""
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONPATH=str(ROOT), FASTGW_LOG_LEVEL="debug", **(env or {}))

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastgw", *(options or ()), "run", "-c", str(self.config_path)],
            stderr=self.log_file,
            stdout=self.log_file,
            env=env,
            cwd=self.dir,
            preexec_fn=limit,
        )
        if wait:
            workers = self.config["server"].get("workers", 1)
            self.wait_log(r"serving config version", count=workers)
            wait_for(self.ready, what="gateway /readyz")
        return self

    def ready(self) -> bool:
        try:
            return request(self.admin_port, "GET", "/readyz", timeout=1).status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 10.0) -> str:
        regex = re.compile(pattern)

        def enough() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n{self.log()}")
            return len(regex.findall(self.log())) >= count

        wait_for(enough, timeout, what=f"log line /{pattern}/ x{count}")
        return self.log()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def worker_pids(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log_file.close()
        return code


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    http_version: str = "1.1"
    trailers: list[tuple[str, str]] = field(default_factory=list)
    reason: str = ""

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def _collect(conn: h11.Connection, sock: socket.socket, max_body: int | None = None) -> Response:
    response = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(1 << 20)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            response = Response(
                event.status_code,
                [(k.decode().lower(), v.decode("latin-1")) for k, v in event.headers],
                b"",
                event.http_version.decode(),
                reason=event.reason.decode("latin-1"),
            )
        elif isinstance(event, h11.Data):
            if max_body is None or len(body) < max_body:
                body += event.data
        elif isinstance(event, h11.EndOfMessage):
            response.body = bytes(body)
            response.trailers = [(k.decode().lower(), v.decode()) for k, v in event.headers]
            return response
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("connection closed before the response ended")
        else:
            raise AssertionError(f"unexpected event {event!r}")


class Client:
    """A keep-alive HTTP/1.1 client connection, strict about what it receives."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h11.Connection(h11.CLIENT)

    def request(
        self,
        method: str = "GET",
        target: str = "/",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        host: str = "gw.test",
    ) -> Response:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        hdrs = [("Host", host)] if host else []
        hdrs += headers or []
        names = {k.lower() for k, _ in hdrs}
        if body and "content-length" not in names and "transfer-encoding" not in names:
            hdrs.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        self.sock.sendall(out)
        return _collect(self.conn, self.sock)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(
    port: int, method: str = "GET", target: str = "/", timeout: float = 10.0, **kw: Any
) -> Response:
    with Client(port, timeout) as client:
        return client.request(method, target, **kw)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, shutdown: bool = False) -> bytes:
    """Send raw bytes; read until the gateway closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock, timeout)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def parse_responses(data: bytes, methods: list[str]) -> list[Response]:
    """Parse back-to-back responses with h11, one per request method given."""
    responses = []
    for method in methods:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        conn.receive_data(b"")  # the data is complete: let close-delimited bodies end

        class _NoSocket:
            def recv(self, n: int) -> bytes:
                return b""

        responses.append(_collect(conn, _NoSocket()))
        data = bytes(conn.trailing_data[0])
    return responses


def upstream_open(port: int) -> int:
    """Connections open at the test upstream, asked directly (not counting the asking one)."""
    return request(port, "GET", "/stats", host="u").json()["open"] - 1


def status_of(data: bytes) -> int:
    """The status code of the first response in raw bytes."""
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    if not match:
        raise AssertionError(f"not an HTTP response: {data[:80]!r}")
    return int(match.group(1))


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@contextlib.contextmanager
def demo(tmp_path: Path, config_name: str) -> Iterator[int]:
    """`fastgw demo` on a shipped config moved to free ports; yields the gateway's port."""
    port, admin, echo = free_port(), free_port(), free_port()
    text = (ROOT / "config" / config_name).read_text()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    text = text.replace("127.0.0.1:9901", f"127.0.0.1:{admin}")
    text = text.replace("127.0.0.1:9001", f"127.0.0.1:{echo}")
    text = text.replace("./fastgw-state", str(tmp_path / "fastgw-state"))
    path = tmp_path / config_name
    path.write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastgw", "demo", "-c", str(path)], cwd=ROOT, stderr=subprocess.PIPE
    )

    def ready() -> bool:
        try:
            return request(admin, "GET", "/readyz", timeout=1).status == 200
        except OSError:
            return False

    try:
        wait_for(ready, what="demo gateway ready")
        wait_for(lambda: port_open(echo), what="demo echo upstream")
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class RedisServer:
    """`redis-server` (the OS package) on a free loopback port, without persistence; it can be
    killed and started again on the same port. Talked to with redis-py's plain client."""

    def __init__(
        self, password: str | None = None, tls: tuple[str, str, str] | None = None
    ) -> None:
        """`tls`: (certificate, key, CA) files: the server then speaks only TLS."""
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if self.tls is None:
            command = ["redis-server", "--port", str(self.port)]
        else:
            command = ["redis-server", "--port", "0", "--tls-port", str(self.port)]
            command += ["--tls-cert-file", self.tls[0], "--tls-key-file", self.tls[1]]
            command += ["--tls-ca-cert-file", self.tls[2], "--tls-auth-clients", "no"]
        command += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--enable-debug-command", "local"]
        if self.password:
            command += ["--requirepass", self.password]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, what="redis-server")
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except Exception:
            return False

    def kill(self) -> None:
        """Gone at once, as a crash: SIGKILL, and reaped."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
