"""The processes a bench run starts (upstream, fastgw, nginx) and what it reads from /proc."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# nginx's proxy settings, stated because its defaults spill large bodies to temp files.
NGINX_BUFFERS = (
    "nginx defaults: proxy_buffering on, proxy_buffers 8 4k, proxy_buffer_size 4k, "
    "client_body_buffer_size 16k, proxy_request_buffering on (larger bodies go to temp files)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def pinned(cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu] if cpu is not None else []


class Service:
    """A started process tree: its pids are the root and its children."""

    name = "service"

    def __init__(self, args: list[str], port: int, cpu: str | None, log: Path) -> None:
        self.port = port
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*pinned(cpu), *args], stdout=self.log, stderr=self.log, cwd=ROOT
        )
        wait_port(port, self.proc)

    def pids(self) -> list[int]:
        root = self.proc.pid
        children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
        return [root, *map(int, children)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class BenchUpstream(Service):
    name = "upstream"

    def __init__(self, workdir: Path, size: str = "12", cpu: str | None = None) -> None:
        port = free_port()
        super().__init__(
            [sys.executable, "-m", "bench.upstream", "--port", str(port), "--size", size],
            port,
            cpu,
            workdir / f"upstream-{port}.log",
        )


class FastGW(Service):
    name = "fastgw"

    def __init__(
        self,
        workdir: Path,
        upstream_port: int,
        routes: int = 10,
        workers: int = 1,
        cpu: str | None = None,
        extra: dict | None = None,
        server: dict | None = None,
    ) -> None:
        """`extra`: top-level sections; `server`: keys added to the `server` section."""
        port = free_port()
        config: dict = {
            "server": {
                "listen": f"127.0.0.1:{port}",
                "workers": workers,
                "limits": {"max_connections": 20000, "max_body_bytes": "1GiB"},
                **(server or {}),
            },
            "upstreams": {
                "up": {
                    "targets": [{"url": f"http://127.0.0.1:{upstream_port}"}],
                    "pool": {"max_idle": 256},
                }
            },
            "routes": route_table(routes),
            **(extra or {}),
        }
        path = workdir / f"fastgw-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        env_python = [
            sys.executable,
            "-m",
            "fastgw",
            "--log-level",
            "warning",
            "run",
            "-c",
            str(path),
        ]
        super().__init__(env_python, port, cpu, workdir / f"fastgw-{port}.log")
        expected = workers + 1
        deadline = time.monotonic() + 15
        while len(self.pids()) < expected and time.monotonic() < deadline:
            time.sleep(0.02)


class BenchRedis(Service):
    """redis-server (the OS package) on a free port, without persistence, for shared limits."""

    name = "redis"

    def __init__(self, workdir: Path, cpu: str | None = None) -> None:
        port = free_port()
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        super().__init__([*command, "--appendonly", "no"], port, cpu, workdir / f"redis-{port}.log")
        self.url = f"redis://127.0.0.1:{port}/0"


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def route_table(count: int) -> list[dict]:
    """`count` routes: distinct services with exact, parameter and prefix paths, and a catch-all."""
    routes = []
    for i in range(count - 1):
        kind = i % 3
        path = (f"/svc{i}/health", f"/svc{i}/items/{{id}}", f"/svc{i}/api/*")[kind]
        routes.append({"name": f"r{i}", "match": {"paths": [path]}, "upstream": "up"})
    routes.append({"name": "catch-all", "match": {"paths": ["/*"]}, "upstream": "up"})
    return routes


class Nginx(Service):
    name = "nginx"

    def __init__(self, workdir: Path, upstream_port: int, cpu: str | None = None) -> None:
        port = free_port()
        prefix = workdir / f"nginx-{port}"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"""
user root;
worker_processes 1;
worker_rlimit_nofile 30000;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    client_max_body_size 0;
    keepalive_requests 1000000;
    upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 256; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        )
        super().__init__(
            ["nginx", "-c", str(conf), "-p", str(prefix)], port, cpu, prefix / "stdout.log"
        )


class Minimal(Service):
    """The yardstick (bench/minimal.py): a feature-less uvloop + httptools proxy."""

    name = "minimal"

    def __init__(self, workdir: Path, upstream_port: int, cpu: str | None = None) -> None:
        port = free_port()
        super().__init__(
            [
                sys.executable,
                "-m",
                "bench.minimal",
                "--port",
                str(port),
                "--upstream",
                str(upstream_port),
            ],
            port,
            cpu,
            workdir / f"minimal-{port}.log",
        )


def nginx_available() -> bool:
    return shutil.which("nginx") is not None


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system, all threads) used so far by these processes, in seconds."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kib(pids: list[int], key: str = "VmRSS") -> int:
    """Sum of VmRSS (or VmHWM, the peak) over the processes, in KiB."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total
