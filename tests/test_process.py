"""The gateway as a service: workers, crash restarts, SIGHUP reloads, SIGTERM drains, memory."""

import copy
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from .support import (
    ROOT,
    Client,
    Gateway,
    Upstream,
    base_config,
    demo,
    request,
    rss_kib,
    upstream_open,
    wait_for,
)


def test_two_workers_share_the_load_and_a_crashed_one_is_restarted(upstream, tmp_path):
    gw = Gateway(tmp_path, base_config(upstream.url, workers=2)).start()
    try:
        pids = wait_for(lambda: len(gw.worker_pids()) == 2 and gw.worker_pids(), what="two workers")
        prefixes = set()
        for _ in range(40):
            seen = dict(request(gw.port, "GET", "/").json()["headers"])
            prefixes.add(seen["X-Request-ID"].split("-")[0])
        assert len(prefixes) == 2  # both workers answered (SO_REUSEPORT spreads connections)
        os.kill(pids[0], signal.SIGKILL)
        gw.wait_log(r"worker \d exited unexpectedly \(killed by SIGKILL\); restarting")
        wait_for(
            lambda: len(gw.worker_pids()) == 2 and pids[0] not in gw.worker_pids(), what="restart"
        )
        gw.wait_log(r"serving config version 1", count=3)
        for _ in range(10):
            assert request(gw.port, "GET", "/").status == 200
    finally:
        assert gw.stop() == 0


def route(name: str, path: str) -> dict:
    return {"name": name, "match": {"paths": [path]}, "upstream": "up"}


def test_reload_under_load_loses_nothing(upstream, tmp_path):
    config = base_config(upstream.url, workers=2)
    gw = Gateway(tmp_path, config).start()
    failures: list[str] = []
    done = threading.Event()
    counts = [0]

    def load() -> None:
        while not done.is_set():
            try:
                with Client(gw.port, timeout=5) as client:
                    for _ in range(20):
                        status = client.request("POST", "/echo", body=b"payload").status
                        if status != 200:
                            failures.append(f"status {status}")
                        counts[0] += 1
                status = request(gw.port, "GET", "/fresh").status
                counts[0] += 1
                if status != 200:
                    failures.append(f"status {status}")
            except Exception as exc:  # any reset, refusal or parse error is a lost request
                failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for version in range(2, 12):
            new = copy.deepcopy(config)
            new["routes"].insert(0, route(f"v{version}", f"/v{version}"))
            gw.write_config(new)
            gw.signal(signal.SIGHUP)
            gw.wait_log(rf"config version {version} \(\w+\) live", count=2)
            assert request(gw.port, "GET", f"/v{version}").json()["target"] == f"/v{version}"
    finally:
        done.set()
        for t in threads:
            t.join(10)
        code = gw.stop()
    assert failures == []
    assert counts[0] > 100
    assert code == 0


def test_invalid_reload_keeps_the_old_config(upstream, tmp_path):
    config = base_config(upstream.url)
    config["routes"] = [route("only", "/only")]
    gw = Gateway(tmp_path, config).start()
    try:
        bad = copy.deepcopy(config)
        bad["routes"].append({"match": {"paths": ["/x"]}, "upstream": "nope"})
        gw.write_config(bad)
        gw.signal(signal.SIGHUP)
        log = gw.wait_log("reload failed")
        assert "still serving config version 1" in log
        assert "routes[1].upstream: unknown upstream 'nope' (known: up)" in log
        assert request(gw.port, "GET", "/only").status == 200
        assert request(gw.port, "GET", "/x").status == 404
        # A later valid reload works.
        good = copy.deepcopy(config)
        good["routes"].append(route("x", "/x"))
        gw.write_config(good)
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"config version 2 \(\w+\) live")
        assert request(gw.port, "GET", "/x").status == 200
    finally:
        gw.stop()


def test_an_empty_config_on_reload_keeps_the_old_one(upstream, tmp_path):
    gw = Gateway(tmp_path, base_config(upstream.url)).start()
    try:
        for done, text in enumerate(("", "# emptied by mistake\n", "upstreams:\n  up:\n")):
            gw.config_path.write_text(text)
            gw.signal(signal.SIGHUP)
            gw.wait_log("reload failed", count=done + 1)
            assert request(gw.port, "GET", "/still").status == 200
            assert request(gw.admin_port, "GET", "/readyz").json()["config_version"] == 1
        assert "routes: expected at least one route" in gw.log()
    finally:
        gw.stop()


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path):
    own = Upstream()
    gw = Gateway(tmp_path, base_config(own.url, timeouts={"drain": "10s"})).start()
    result = {}

    def slow() -> None:
        result["response"] = request(gw.port, "GET", "/slow?delay=2.5")

    try:
        thread = threading.Thread(target=slow)
        thread.start()
        wait_for(lambda: upstream_open(own.port) == 1, what="the slow request at the upstream")
        idle = Client(gw.port)
        assert idle.request("GET", "/").status == 200
        gw.signal(signal.SIGTERM)
        gw.wait_log("draining")
        # The idle keep-alive connection is closed at once; new connections are refused.
        assert idle.sock.recv(1) == b""
        idle.close()
        # The admin listener still answers while the drain lasts, so a load balancer's probe
        # tells "draining" from "dead"; /healthz is still 200.
        ready = request(gw.admin_port, "GET", "/readyz")
        assert ready.status == 503 and ready.json()["status"] == "draining"
        assert request(gw.admin_port, "GET", "/healthz").status == 200
        assert result == {}  # all of that while the slow request was still in flight
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", gw.port), timeout=2).recv(1)
        thread.join(10)
        assert result["response"].status == 200
        assert result["response"].body == b"slow"
        assert gw.proc.wait(10) == 0
        with pytest.raises(OSError):  # the drain over, the admin listener is gone too
            socket.create_connection(("127.0.0.1", gw.admin_port), timeout=2).recv(1)
    finally:
        gw.stop()
        own.stop()


def test_one_gib_each_way_with_bounded_memory(upstream, tmp_path):
    config = base_config(upstream.url, limits={"max_body_bytes": "2GiB"})
    gw = Gateway(tmp_path, config).start()
    try:
        (worker,) = gw.worker_pids()
        assert request(gw.port, "GET", "/warm").status == 200
        _, peak_before = rss_kib(worker)
        size = 1 << 30
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
            sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            received = len(head.partition(b"\r\n\r\n")[2])
            buffer = bytearray(1 << 20)
            while received < size:
                n = sock.recv_into(buffer)
                assert n
                received += n
        assert received == size
        block = os.urandom(1 << 20)
        digest = hashlib.sha256()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
            sock.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // len(block)):
                sock.sendall(block)
                digest.update(block)
            reply = b""
            while not reply.endswith(b"}"):
                reply += sock.recv(65536)
        assert b'"body_bytes": %d' % size in reply
        assert digest.hexdigest().encode() in reply
        _, peak_after = rss_kib(worker)
        assert peak_after - peak_before < 40 * 1024, (peak_before, peak_after)
    finally:
        gw.stop()


def test_python_dash_m_and_unknown_commands():
    result = subprocess.run(
        [sys.executable, "-m", "fastgw", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0
    for command in ("run", "check", "routes", "demo"):
        assert command in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "fastgw", "check"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    assert "-c/--config" in result.stderr


def test_busy_port_is_reported_before_workers_start(upstream, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = base_config(upstream.url)
        config["server"]["listen"] = f"127.0.0.1:{port}"
        gw = Gateway(tmp_path, config).start(wait=False)
        assert gw.proc.wait(10) == 1
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in gw.log()
        gw.stop()


def test_demo_serves_the_shipped_example(tmp_path):
    with demo(tmp_path, "fastgw.yaml") as port:
        response = request(port, "GET", "/echo/hello")
        assert response.status == 200
        assert response.json()["url"] == "/echo/hello"


def test_workers_auto_starts_one_per_core(upstream, tmp_path):
    cores = len(os.sched_getaffinity(0))
    gw = Gateway(tmp_path, base_config(upstream.url, workers="auto"))
    gw.config["server"]["workers"] = cores  # what the fixture waits for
    gw.start()
    try:
        assert len(gw.worker_pids()) == cores
        assert f"{cores} worker(s)" in gw.log()
    finally:
        gw.stop()


@pytest.mark.skipif(
    shutil.which("strace") is None and not os.environ.get("CI"), reason="strace not installed"
)
def test_head_and_small_body_leave_in_one_write_each_way(upstream, tmp_path):
    """Split writes meet delayed ACKs at paced rates: each message goes out in one syscall."""
    gw = Gateway(tmp_path, base_config(upstream.url)).start()
    trace = tmp_path / "strace.txt"
    try:
        (worker,) = gw.worker_pids()
        with Client(gw.port) as client:
            assert client.request("GET", "/warm").status == 200  # a pooled upstream connection
            tracer = subprocess.Popen(
                [
                    "strace",
                    "-p",
                    str(worker),
                    "-e",
                    "trace=write,writev,sendto,sendmsg",
                    "-s",
                    "65536",
                    "-o",
                    str(trace),
                ],
                stderr=subprocess.PIPE,
            )
            assert "attached" in tracer.stderr.readline().decode()  # strace: Process N attached
            response = client.request("POST", "/onewrite", body=b"small-body")
            assert response.status == 200
        tracer.terminate()
        tracer.wait(5)
        calls = trace.read_text().splitlines()
        to_upstream = [c for c in calls if "POST /onewrite" in c]
        assert len(to_upstream) == 1 and "small-body" in to_upstream[0], to_upstream
        to_client = [c for c in calls if "HTTP/1.1 200" in c]
        assert len(to_client) == 1 and '\\"served\\"' in to_client[0], to_client
    finally:
        gw.stop()


def test_reload_closes_connections_to_upstreams_it_removed(upstream, tmp_path):
    old = Upstream()
    config = base_config(old.url)
    config["upstreams"]["new"] = {"targets": [{"url": upstream.url}]}
    gw = Gateway(tmp_path, config).start()
    result = {}
    try:
        thread = threading.Thread(
            target=lambda: result.update(r=request(gw.port, "GET", "/slow?delay=1"))
        )
        thread.start()
        wait_for(lambda: upstream_open(old.port) == 1, what="the slow request at the old upstream")
        new = copy.deepcopy(config)
        del new["upstreams"]["up"]
        new["routes"][0]["upstream"] = "new"
        gw.write_config(new)
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"config version 2 \(\w+\) live")
        thread.join(10)
        assert (
            result["r"].status == 200 and result["r"].body == b"slow"
        )  # finished on the old config
        # Its connection is closed at once, not kept until the pool's idle timeout (60 s).
        wait_for(
            lambda: upstream_open(old.port) == 0,
            timeout=5,
            what="the old upstream's connection closed",
        )
        assert request(gw.port, "GET", "/x").json()["target"] == "/x"  # new requests use `new`
    finally:
        gw.stop()
        old.stop()
