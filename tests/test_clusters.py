"""Upstreams as clusters, end to end: each upstream's timeouts and pool limits hold whatever
other upstreams on the same target did before, and the read deadline belongs to the attempt."""

import socket
import time

import pytest

from .support import (
    Gateway,
    base_config,
    in_parallel,
    request,
    upstream_open,
    wait_for,
)


def two_upstreams(url: str, one: dict, other: dict) -> dict:
    config = base_config(url)
    config["upstreams"] = {
        "one": {"targets": [{"url": url}], **one},
        "slow": {"targets": [{"url": url}], **other},
    }
    config["routes"] = [
        {"name": name, "match": {"paths": [f"/{name}/*"]}, "upstream": name, "strip_prefix": True}
        for name in ("one", "slow")
    ]
    return config


def timed(port: int, target: str) -> tuple[int, float]:
    started = time.monotonic()
    status = request(port, "GET", target).status
    return status, time.monotonic() - started


def test_read_timeouts_do_not_leak_between_upstreams_in_either_order(upstream, tmp_path):
    gw = Gateway(tmp_path, two_upstreams(upstream.url, {}, {"timeouts": {"read": "1s"}})).start()
    try:
        # A connection used by `one` (read 30s), then `slow` (read 1s) on a 3 s upstream.
        assert timed(gw.port, "/one/x")[0] == 200
        status, took = timed(gw.port, "/slow/slow?delay=3")
        assert status == 504 and 0.9 < took < 2.5, took
        # The other order: `slow` first (a fast answer), then `one` waits 2 s and gets it.
        assert timed(gw.port, "/slow/slow?delay=0")[0] == 200
        status, took = timed(gw.port, "/one/slow?delay=2")
        assert status == 200 and took >= 1.9, took
    finally:
        gw.stop()


def test_pool_sizes_are_per_upstream(own_upstream, tmp_path):
    config = two_upstreams(own_upstream.url, {"pool": {"max_idle": 1}}, {"pool": {"max_idle": 3}})
    gw = Gateway(tmp_path, config).start()
    try:
        assert (
            in_parallel(lambda: request(gw.port, "GET", "/one/slow?delay=0.5").status, 4)
            == [200] * 4
        )
        wait_for(lambda: upstream_open(own_upstream.port) == 1, what="one kept 1 idle connection")
        assert (
            in_parallel(lambda: request(gw.port, "GET", "/slow/slow?delay=0.5").status, 4)
            == [200] * 4
        )
        wait_for(lambda: upstream_open(own_upstream.port) == 4, what="slow kept 3 more")
        assert (
            in_parallel(lambda: request(gw.port, "GET", "/one/slow?delay=0.5").status, 4)
            == [200] * 4
        )
        wait_for(lambda: upstream_open(own_upstream.port) == 4, what="still 1 + 3")
    finally:
        gw.stop()


@pytest.fixture
def strict(upstream, tmp_path):
    config = base_config(upstream.url)
    config["upstreams"]["up"]["timeouts"] = {"read": "1s"}
    gw = Gateway(tmp_path, config).start()
    yield gw
    gw.stop()


def test_a_steady_slow_upload_outlasts_the_read_timeout(strict):
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        sock.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        for byte in b"abcde":  # one byte every 0.6 s: 3 s in all, the read timeout is 1 s
            time.sleep(0.6)
            sock.sendall(bytes([byte]))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'"body_bytes": 5' in answer


def test_a_client_that_stops_reading_does_not_time_the_upstream_out(strict):
    size = 32 * 1024 * 1024
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", strict.port))
    with sock:
        sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        data = sock.recv(65536)
        time.sleep(2.5)  # the gateway's and the upstream's buffers fill; the upstream waits
        head, _, body = data.partition(b"\r\n\r\n")
        received = len(body)
        while received < size:
            data = sock.recv(1 << 20)
            assert data, f"closed after {received} of {size} body bytes"
            received += len(data)
    assert head.startswith(b"HTTP/1.1 200 ") and received == size
    assert "timeout" not in strict.log()
