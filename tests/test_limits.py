"""Limits, timeouts and request-smuggling defences, each answered with a clear error."""

import json
import socket
import time

import pytest

from .support import (
    Client,
    Gateway,
    base_config,
    in_parallel,
    raw_exchange,
    read_until_closed,
    request,
    status_of,
    wait_for,
)


@pytest.fixture(scope="module")
def strict(upstream, tmp_path_factory):
    config = base_config(
        upstream.url,
        limits={
            "max_request_line": 200,
            "max_header_bytes": "2KiB",
            "max_body_bytes": 1000,
            "max_connections": 20,
        },
        timeouts={"client_header": "1s", "keepalive": "1500ms"},
    )
    gw = Gateway(tmp_path_factory.mktemp("strict"), config).start()
    yield gw
    gw.stop()


def error_of(data: bytes) -> tuple[int, dict]:
    body = data.partition(b"\r\n\r\n")[2]
    return status_of(data), json.loads(body)


def test_request_line_too_long_is_414(strict):
    data = raw_exchange(strict.port, b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, body = error_of(data)
    assert status == 414
    assert body["status"] == 414 and body["error"] == "request line too long"


def test_headers_too_large_is_431(strict):
    data = raw_exchange(
        strict.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 3000 + b"\r\n\r\n"
    )
    assert error_of(data)[0] == 431
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(60))
    assert (
        status_of(raw_exchange(strict.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"))
        == 431
    )
    # A header that never ends is cut off too: memory stays bounded.
    with socket.create_connection(("127.0.0.1", strict.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            for _ in range(100):
                sock.sendall(b"e" * 1000)
        except OSError:
            pass
        assert status_of(read_until_closed(sock)) == 431


def test_body_limit_from_content_length_before_reading(strict):
    with socket.create_connection(("127.0.0.1", strict.port), timeout=5) as sock:
        sock.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        data = read_until_closed(sock)  # answered without sending a byte of the body
    status, body = error_of(data)
    assert status == 413 and body["error"] == "request body too large"
    assert b"connection: close" in data.lower()
    assert request(strict.port, "POST", "/sink", body=b"x" * 1000).json()["body_bytes"] == 1000


def test_body_limit_while_streaming_chunked(strict):
    chunks = b"".join(b"100\r\n" + b"c" * 256 + b"\r\n" for _ in range(5))
    data = raw_exchange(
        strict.port,
        b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n",
    )
    assert error_of(data)[0] == 413


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad\r\n: folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n X-Folded: yes\r\n\r\n",
    ],
)
def test_smuggling_and_malformed_requests_get_400_and_close(strict, head):
    with socket.create_connection(("127.0.0.1", strict.port), timeout=5) as sock:
        sock.sendall(head + b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_closed(sock)
    status, body = error_of(data)
    assert status == 400, data
    assert body["status"] == 400
    assert b"connection: close" in data.lower()
    assert data.count(b"HTTP/1.1 ") == 1  # nothing after it was served


def test_slowloris_gets_408_and_does_not_block_others(strict):
    with socket.create_connection(("127.0.0.1", strict.port), timeout=5) as slow:
        started = time.monotonic()
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # others are served while the slow head trickles in
            assert request(strict.port, "GET", "/status/200").status == 200
            slow.sendall(b"X-Drip: 1\r\n")
            time.sleep(0.1)
        data = read_until_closed(slow, timeout=5)
        elapsed = time.monotonic() - started
    assert status_of(data) == 408
    assert 0.9 < elapsed < 3.0


def test_request_stalled_inside_the_method_is_closed_at_the_deadline(strict):
    # The head timer starts with the request target (there is no message-begin callback):
    # a few bytes of a method then silence count as idle time and are closed silently.
    with socket.create_connection(("127.0.0.1", strict.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GE")
        assert read_until_closed(sock, timeout=5) == b""
        assert 0.9 < time.monotonic() - started < 3.0
    with Client(strict.port) as client:  # on a reused connection, at the keep-alive deadline
        assert client.request("GET", "/status/200").status == 200
        started = time.monotonic()
        client.sock.sendall(b"POS")
        assert read_until_closed(client.sock, timeout=5) == b""
        assert 1.4 < time.monotonic() - started < 3.5


def test_silent_connection_is_closed_without_a_reply(strict):
    with socket.create_connection(("127.0.0.1", strict.port), timeout=5) as sock:
        started = time.monotonic()
        assert read_until_closed(sock, timeout=5) == b""
        assert time.monotonic() - started < 3.0


def test_keepalive_idle_timeout_closes(strict):
    with Client(strict.port) as client:
        assert client.request("GET", "/status/200").status == 200
        started = time.monotonic()
        assert read_until_closed(client.sock, timeout=5) == b""
        assert 1.2 < time.monotonic() - started < 3.5


def test_max_connections(strict):
    held = [socket.create_connection(("127.0.0.1", strict.port), timeout=5) for _ in range(20)]
    try:
        # Each held connection is accepted; the next one is refused with a 503.
        wait_for(
            lambda: (
                status_of(raw_exchange(strict.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")) == 503
            ),
            what="503",
        )
    finally:
        for sock in held:
            sock.close()
    wait_for(
        lambda: (
            status_of(
                raw_exchange(
                    strict.port, b"GET /status/200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
            )
            == 200
        ),
        what="recovery",
    )


def test_concurrent_clients(strict):
    results = in_parallel(lambda: request(strict.port, "GET", "/echo").status, 10)
    assert results == [200] * 10
