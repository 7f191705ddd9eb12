"""The master owns its listeners: a second gateway on the same addresses fails at start, a
restarted worker keeps the master's listeners, and running out of file descriptors pauses
accepting and answers 503 instead of dropping connections or blaming the upstream."""

import copy
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .support import (
    ROOT,
    Gateway,
    Upstream,
    base_config,
    free_port,
    port_open,
    read_until_closed,
    request,
    status_of,
    upstream_open,
    wait_for,
)


def prefix_of(port: int) -> str:
    """The request-id prefix of the worker that answered (one per worker process)."""
    return dict(request(port, "GET", "/").json()["headers"])["X-Request-ID"].split("-")[0]


def test_a_second_gateway_on_the_same_addresses_fails_at_start(upstream, tmp_path):
    first = Gateway(tmp_path, base_config(upstream.url), "first.yaml").start()
    try:
        ours = {prefix_of(first.port)}
        same = Gateway(tmp_path, first.config, "same.yaml").start(wait=False)
        assert same.proc.wait(15) == 1
        log = same.log()
        master = first.proc.pid
        for port in (first.port, first.admin_port):
            assert (
                f"cannot listen on 127.0.0.1:{port}: Address already in use (held by pid {master} "
                in log
            )
        # Another config, same listen address (its admin port is free): refused as well.
        other = copy.deepcopy(first.config)
        other["server"]["admin"] = f"127.0.0.1:{free_port()}"
        other["server"]["workers"] = 2
        again = Gateway(tmp_path, other, "other.yaml").start(wait=False)
        assert again.proc.wait(15) == 1
        assert (
            f"cannot listen on 127.0.0.1:{first.port}: Address already in use (held by pid {master}"
            in again.log()
        )
        assert not port_open(int(other["server"]["admin"].rsplit(":", 1)[1]))  # bound none
        # Every request is still the first gateway's.
        assert {prefix_of(first.port) for _ in range(20)} == ours
        # `fastgw check` binds nothing: it is not affected.
        check = subprocess.run(
            [sys.executable, "-m", "fastgw", "check", "-c", str(first.config_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert check.returncode == 0 and check.stdout.startswith("ok:")
        same.stop()
        again.stop()
    finally:
        assert first.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_restarted_after_a_listen_change_keeps_the_masters_listeners(
    upstream, tmp_path, workers
):
    gw = Gateway(tmp_path, base_config(upstream.url, workers=workers)).start()
    try:
        moved = copy.deepcopy(gw.config)
        new_port = free_port()
        moved["server"]["listen"] = f"127.0.0.1:{new_port}"
        gw.write_config(moved)
        gw.signal(signal.SIGHUP)
        gw.wait_log("take effect after a restart")
        gw.wait_log(r"config version 2 \(\w+\) live", count=workers)
        for pid in gw.worker_pids():
            os.kill(pid, signal.SIGKILL)
        gw.wait_log("exited unexpectedly", count=workers)
        wait_for(lambda: len(gw.worker_pids()) == workers, what="workers restarted")
        gw.wait_log("serving config version 2", count=workers)
        for _ in range(20):
            assert request(gw.port, "GET", "/").status == 200
        assert not port_open(new_port)
    finally:
        assert gw.stop() == 0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def serving_connections(port: int) -> int:
    """Server-side TCP connections on a local port still open (established or closing)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in ("01", "08"):
            count += 1
    return count


def test_out_of_file_descriptors(upstream, tmp_path):
    limit = 64
    gw = Gateway(tmp_path, base_config(upstream.url)).start(nofile=limit)
    idle: list[socket.socket] = []
    try:
        (worker,) = gw.worker_pids()
        # The readiness probe's connection must be gone before the descriptors are counted.
        wait_for(lambda: serving_connections(gw.admin_port) == 0, what="probe closed")
        base = open_files(worker)
        # Idle client connections until the worker has one descriptor left.
        while base + len(idle) < limit - 1:
            idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
            wait_for(lambda: open_files(worker) == base + len(idle), what="connection accepted")
        # This request takes the last one: the upstream cannot be dialled. 503, not 502.
        answer = request(gw.port, "GET", "/x")
        assert answer.status == 503
        assert answer.json()["error"] == "gateway out of file descriptors"
        log = gw.wait_log(rf"connect to upstream .*Too many open files \(open file limit {limit}\)")
        assert "refused" not in log
        # Now all are in use: a new connection waits in the backlog (accepting is paused)...
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as waiting:
            waiting.sendall(b"GET /queued HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            gw.wait_log(
                rf"accept on 127.0.0.1:{gw.port}: Too many open files \(open file limit {limit}\)"
            )
            waiting.settimeout(0.3)
            with pytest.raises(TimeoutError):
                waiting.recv(1)  # neither answered nor closed
            # ...and is served once descriptors are free again.
            for sock in idle[:4]:
                sock.close()
            answer = read_until_closed(waiting, timeout=5)
        assert status_of(answer) == 200 and b'"target": "/queued"' in answer
        assert gw.log().count("accept on") == 1  # rate-limited: one line for the episode
    finally:
        for sock in idle:
            sock.close()
        gw.stop()


def test_requests_cut_at_the_drain_deadline_are_counted(tmp_path):
    own = Upstream()
    gw = Gateway(tmp_path, base_config(own.url, timeouts={"drain": "1s"})).start()
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as slow:
            slow.sendall(b"GET /slow?delay=5 HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: upstream_open(own.port) == 1, what="the request upstream")
            gw.signal(signal.SIGTERM)
            assert gw.proc.wait(15) == 0
            assert read_until_closed(slow) == b""  # cut: no response
        assert "1 requests cut at the drain deadline" in gw.log()
    finally:
        gw.stop()
        own.stop()
