"""End to end through a real gateway process to a real upstream process (workers: 1)."""

import hashlib
import re
import socket
import time

import h11
import pytest

from .support import Client, parse_responses, raw_exchange, read_until_closed, request, status_of


def test_get_is_proxied_with_forwarding_headers(gateway):
    response = request(
        gateway.port, "GET", "/echo/a?x=1&y=2", headers=[("X-Forwarded-For", "10.0.0.9")]
    )
    assert response.status == 200
    seen = response.json()
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert seen["target"] == "/echo/a?x=1&y=2"
    assert seen["http_version"] == "1.1"
    assert headers["host"] == "gw.test"
    assert headers["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "gw.test"
    assert len(headers["x-request-id"]) > 8
    assert response.header("x-upstream-hop") == "yes"


def test_request_id_is_kept_or_generated_uniquely(gateway):
    kept = request(gateway.port, "GET", "/", headers=[("X-Request-ID", "abc-123")]).json()
    assert ["X-Request-ID", "abc-123"] in kept["headers"]
    ids = set()
    for _ in range(5):
        seen = dict(request(gateway.port, "GET", "/").json()["headers"])
        ids.add(seen["X-Request-ID"])
    assert len(ids) == 5
    spoofed_proto = dict(
        request(
            gateway.port,
            "GET",
            "/",
            headers=[("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil")],
        ).json()["headers"]
    )
    assert spoofed_proto["X-Forwarded-Proto"] == "http"
    assert spoofed_proto["X-Forwarded-Host"] == "gw.test"


def test_hop_by_hop_headers_are_removed_both_ways(gateway):
    response = request(
        gateway.port,
        "GET",
        "/hop",
        headers=[
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Public", "ok"),
        ],
    )
    names = {k.lower() for k, _ in response.json()["headers"]}
    assert "x-public" in names
    for hop in ("connection", "x-private", "keep-alive", "te", "proxy-connection"):
        assert hop not in names
    # The upstream's `Connection: X-Secret-Hop` names a header that must not reach the client.
    assert response.header("x-secret-hop") is None
    assert response.header("keep-alive") is None
    assert response.header("connection") is None


def test_keep_alive_reuses_one_upstream_connection(gateway):
    with Client(gateway.port) as client:
        first = client.request("GET", "/a").json()
        second = client.request("GET", "/b").json()
        third = client.request("POST", "/c", body=b"x" * 100).json()
    assert first["connection"] == second["connection"] == third["connection"]
    assert third["body_bytes"] == 100
    # A new client connection still gets the pooled upstream connection.
    assert request(gateway.port, "GET", "/d").json()["connection"] == first["connection"]


def test_post_body_arrives_intact(gateway):
    body = bytes(range(256)) * 4000
    response = request(gateway.port, "POST", "/sink", body=body)
    assert response.json() == {"body_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_pipelined_requests_are_answered_in_order(gateway):
    requests = (
        b"".join(
            b"GET /slow?delay=%s HTTP/1.1\r\nHost: x\r\n\r\n" % delay
            for delay in (b"0.3", b"0", b"0.1")
        )
        + b"POST /echo/p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /nowhere/../status/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = raw_exchange(gateway.port, requests)
    responses = parse_responses(data, ["GET", "GET", "GET", "POST", "GET"])
    assert [r.status for r in responses] == [200, 200, 200, 200, 204]
    assert [r.body for r in responses[:3]] == [b"slow"] * 3
    assert responses[3].json()["body_bytes"] == 5


def test_http10_client(gateway):
    data = raw_exchange(gateway.port, b"GET /close-delimited HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in data.lower()
    assert data.endswith(b"until the end")
    assert b"transfer-encoding" not in data.lower()
    # HTTP/1.0 keep-alive, when asked for, is honoured.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /status/200 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = sock.recv(65536)
        assert b"connection: keep-alive" in first.lower()
        assert first.endswith(b"status body")
        sock.sendall(b"GET /status/200 HTTP/1.0\r\n\r\n")
        rest = read_until_closed(sock)
        assert rest.endswith(b"status body")
    # The upstream always gets HTTP/1.1.
    seen = parse_responses(raw_exchange(gateway.port, b"GET /e HTTP/1.0\r\n\r\n"), ["GET"])[
        0
    ].json()
    assert seen["http_version"] == "1.1"
    assert [
        "Host",
        f"127.0.0.1:{gateway.config['upstreams']['up']['targets'][0]['url'].rsplit(':', 1)[1]}",
    ] in seen["headers"]


def test_expect_100_continue(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(
            b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = sock.recv(1024)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        conn = h11.Connection(h11.CLIENT)
        conn.send(
            h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "4")])
        )
        conn.receive_data(sock.recv(65536))
        event = conn.next_event()
        assert event.status_code == 200
    # The upstream does not see the Expect header: the gateway handled it.
    seen = request(
        gateway.port, "POST", "/e", body=b"abc", headers=[("Expect", "100-continue")]
    ).json()
    assert "expect" not in {k.lower() for k, _ in seen["headers"]}


def test_status_lines_carry_the_standard_reason_phrase(gateway):
    # The test upstream answers `HTTP/1.1 <code> X`; the gateway writes the standard phrase
    # (as Envoy does) and an empty one for a code that has none, on one keep-alive connection.
    data = raw_exchange(
        gateway.port,
        b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /status/299 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /status/503 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    lines = re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", data)  # each body is `status body`
    assert lines == [b"HTTP/1.1 200 OK", b"HTTP/1.1 299 ", b"HTTP/1.1 503 Service Unavailable"]


def test_head_204_304_have_no_body(gateway):
    with Client(gateway.port) as client:
        head = client.request("HEAD", "/big?size=5000")
        assert head.status == 200
        assert head.header("content-length") == "5000"
        assert head.body == b""
        assert client.request("GET", "/status/204").status == 204
        not_modified = client.request("GET", "/status/304")
        assert not_modified.status == 304
        assert not_modified.body == b""
        # The connection is still in sync afterwards.
        assert client.request("GET", "/status/200").body == b"status body"


def test_close_delimited_upstream_becomes_chunked_for_http11(gateway):
    response = request(gateway.port, "GET", "/close-delimited")
    assert response.status == 200
    assert response.body == b"until the end"
    assert response.header("transfer-encoding") == "chunked"


def test_chunked_both_ways_with_trailers(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(
            b"POST /echo/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"
        )
        conn = h11.Connection(h11.CLIENT)
        conn.send(
            h11.Request(
                method="POST", target="/", headers=[("Host", "x"), ("Transfer-Encoding", "chunked")]
            )
        )
        conn.send(h11.EndOfMessage())
        from .support import _collect

        seen = _collect(conn, sock).json()
    assert seen["body_bytes"] == 11
    assert seen["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert ["Transfer-Encoding", "chunked"] in seen["headers"]
    assert seen["trailers"] == [["X-Checksum", "abc"]]
    response = request(gateway.port, "GET", "/chunked?n=4")
    assert response.body == b"chunk-0;chunk-1;chunk-2;chunk-3;"
    assert response.header("transfer-encoding") == "chunked"
    assert ("x-trailer", "done") in response.trailers
    assert ("x-count", "4") in response.trailers


def test_interim_responses_are_dropped(gateway):
    response = request(gateway.port, "GET", "/interim")
    assert response.status == 200
    assert response.body == b"final"


def test_websocket_upgrade_is_tunnelled(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nearly"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in head.lower()
        received = rest
        while len(received) < 5:
            received += sock.recv(4096)
        assert received == b"EARLY"
        payload = bytes(range(256)) * 64
        sock.sendall(payload.lower())
        got = b""
        while len(got) < len(payload):
            got += sock.recv(65536)
        assert got == payload.lower().upper()


def test_other_upgrades_are_ignored_and_http_goes_on(gateway):
    with Client(gateway.port) as client:
        response = client.request(
            "GET",
            "/x",
            headers=[
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAA"),
            ],
        )
        assert response.status == 200
        names = {k.lower() for k, _ in response.json()["headers"]}
        assert "upgrade" not in names and "http2-settings" not in names
        assert client.request("GET", "/y").status == 200


def test_errors_are_json(gateway, upstream):
    response = request(gateway.port, "GET", "/drop")
    assert response.status == 502
    body = response.json()
    assert (
        body["status"] == 502
        and body["error"]
        and body["request_id"] == response.header("x-request-id")
    )
    assert request(gateway.port, "GET", "/garbage").status == 502
    started = time.monotonic()
    timeout = request(gateway.port, "GET", "/slow?delay=6")
    assert timeout.status == 504
    assert timeout.json()["error"] == "upstream timed out"
    assert 2.5 < time.monotonic() - started < 5.5  # read timeout is 3s


def test_reset_during_the_response_aborts_the_client(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /midbody-reset HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200")
    assert len(data) < (1 << 20)  # truncated, and the connection ended: the client can tell


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_truncated_body_ends_in_a_reset_for_every_client(gateway, version):
    """The upstream sends a chunked head and one 500-byte chunk, then closes: the client must
    see an error (an RST), never a clean end: a FIN would pass for the end of an HTTP/1.0 body."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /truncated HTTP/%s\r\nHost: x\r\n\r\n" % version.encode())
        received = b""
        with pytest.raises(ConnectionResetError):
            while True:
                data = sock.recv(65536)
                assert data, f"a clean end after {len(received)} bytes: {received[:80]!r}"
                received += data
    assert received.startswith(b"HTTP/1.1 200") and received.count(b"x") == 500


def test_path_normalisation(gateway):
    seen = request(gateway.port, "GET", "/a/b/../c//d/./e?q=/../x").json()
    assert seen["target"] == "/a/c/d/e?q=/../x"
    seen = request(gateway.port, "GET", "/a/%2e%2e/b").json()
    assert seen["target"] == "/b"
    assert (
        status_of(raw_exchange(gateway.port, b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"))
        == 400
    )


def test_absolute_form_target(gateway):
    data = raw_exchange(
        gateway.port,
        b"GET http://other.test:81/abs?q=1 HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n",
    )
    seen = parse_responses(data, ["GET"])[0].json()
    assert seen["target"] == "/abs?q=1"
    assert ["Host", "other.test:81"] in seen["headers"]


def test_big_download_and_upload_stream(gateway):
    size = 64 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        received = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        received = len(head.partition(b"\r\n\r\n")[2])
        while received < size:
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
        assert received == size
    body = b"z" * (32 * 1024 * 1024)
    response = request(gateway.port, "POST", "/sink", body=body, timeout=30)
    assert response.json()["body_bytes"] == len(body)
