"""The upstream connection pool: reuse, bounds, idle expiry, no reuse after a broken exchange,
and one retry when a pooled connection turns out to be closed."""

import socket

import pytest

from .support import (
    Client,
    Gateway,
    base_config,
    in_parallel,
    request,
    upstream_open,
    wait_for,
)


@pytest.fixture
def pooled(own_upstream, tmp_path):
    config = base_config(own_upstream.url)
    config["upstreams"]["up"]["pool"] = {"max_idle": 2, "idle_timeout": "1s"}
    gw = Gateway(tmp_path, config).start()
    yield gw
    gw.stop()


def test_stale_pooled_connection_is_retried_once_on_a_fresh_one(pooled):
    first = request(pooled.port, "GET", "/stale").status
    assert first == 200
    # The pooled connection is now one the upstream will drop on its next request.
    again = request(pooled.port, "POST", "/stale", body=b"replayed body")
    assert again.status == 200
    seen = again.json()
    assert seen["served"] == 1 and seen["body_bytes"] == len(b"replayed body")


def test_idle_connections_are_bounded_and_expire(pooled, own_upstream):
    results = in_parallel(lambda: request(pooled.port, "GET", "/slow?delay=0.5").status, 5)
    assert results == [200] * 5
    wait_for(lambda: upstream_open(own_upstream.port) == 2, what="max_idle=2 connections kept")
    # idle_timeout: 1s closes the rest.
    wait_for(
        lambda: upstream_open(own_upstream.port) == 0, timeout=5, what="idle connections expired"
    )
    assert request(pooled.port, "GET", "/after").status == 200


def test_a_response_not_read_to_the_end_is_never_reused(pooled, own_upstream):
    with socket.create_connection(("127.0.0.1", pooled.port), timeout=5) as sock:
        sock.sendall(b"GET /big?size=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    wait_for(lambda: upstream_open(own_upstream.port) == 0, what="the half-read connection closed")
    with Client(pooled.port) as client:
        assert client.request("GET", "/x").json()["served"] == 1
