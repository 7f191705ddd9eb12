"""In-process: attempts, the completion point and the per-attempt deadline, on a fake clock.

Every way an attempt ends must reach `Host.attempt_ended` exactly once with the right outcome;
the read deadline belongs to the attempt, moves with progress either way, and stands still
while the client is the slow party.
"""

import errno

import pytest

from .inproc import FakeTransport, Gateway, config, parse_response, response

GET = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"


def serve(gw: Gateway, request: bytes = GET):
    client, ct = gw.client()
    client.data_received(request)
    return client, ct


def test_ok_on_a_pooled_connection(ended):
    gw = Gateway()
    conn, ut = gw.pooled()
    client, ct = serve(gw)
    exchange = client.current
    assert ut.take().startswith(b"GET /x HTTP/1.1\r\nHost: a.test\r\n")
    assert gw.host().in_flight == 1
    gw.loop.advance(0.25)
    conn.data_received(response())
    assert parse_response(ct.take())[0] == 200
    assert ended == [("10.0.0.1", "ok", 0.0, 0.25, 0.25)]
    assert exchange.upstream_host is gw.host() and exchange.attempts == 1
    assert gw.host().in_flight == 0 and gw.host().idle == [conn]


@pytest.mark.parametrize(
    "request_bytes",
    [
        GET,
        b"POST /u HTTP/1.1\r\nHost: a\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\nT: 1\r\n\r\n",
    ],
)
def test_a_request_split_at_every_offset_is_forwarded_the_same(request_bytes):
    def forwarded(pieces: list[bytes]) -> tuple[bytes, bytes]:
        gw = Gateway()
        conn, ut = gw.pooled()
        client, ct = gw.client()
        for piece in pieces:
            client.data_received(piece)
        sent = ut.take()
        conn.data_received(response())
        return sent, ct.take()

    whole_sent, whole_answer = forwarded([request_bytes])
    assert parse_response(whole_answer)[0] == 200
    normalise = lambda data: data.split(b"X-Request-ID: ")[0]  # noqa: E731 - ids differ
    assert forwarded(list(map(bytes, [[b] for b in request_bytes])))[0].split(b"X-Request-ID")[
        0
    ] == normalise(whole_sent)
    for cut in range(1, len(request_bytes)):
        sent, answer = forwarded([request_bytes[:cut], request_bytes[cut:]])
        assert normalise(sent) == normalise(whole_sent), cut
        assert parse_response(answer)[0] == 200, cut


def test_connect_error_moves_on_to_the_next_host(ended):
    gw = Gateway()
    client, ct = serve(gw)
    gw.dial().fail(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    conn, ut = gw.dial().succeed()
    assert ut.take().startswith(b"GET /x ")
    conn.data_received(response())
    assert parse_response(ct.take())[0] == 200
    assert [(a, o) for a, o, *_ in ended] == [("10.0.0.1", "connect_error"), ("10.0.0.2", "ok")]
    assert client.current is None
    assert gw.host("10.0.0.1").in_flight == gw.host("10.0.0.2").in_flight == 0


def test_connect_timeout_on_every_host_is_504(ended):
    gw = Gateway()
    _client, ct = serve(gw)
    gw.loop.advance(2.0)
    gw.loop.advance(2.0)
    status, _, body = parse_response(ct.take())
    assert status == 504 and b"connect timed out" in body
    assert [(a, o, total) for a, o, _, _, total in ended] == [
        ("10.0.0.1", "connect_error", 2.0),
        ("10.0.0.2", "connect_error", 2.0),
    ]


def test_out_of_file_descriptors_is_the_gateways_own_503(ended, caplog):
    gw = Gateway()
    _client, ct = serve(gw)
    gw.dial().fail(OSError(errno.EMFILE, "Too many open files"))
    status, _, body = parse_response(ct.take())
    assert status == 503 and b"out of file descriptors" in body
    assert [o for _, o, *_ in ended] == ["gateway_error"]
    assert not gw.loop.dials  # no other host is tried: it would fail the same way
    assert "Too many open files (open file limit " in caplog.text and "LimitNOFILE" in caplog.text


def test_read_timeout_ends_the_attempt_once(ended):
    gw = Gateway(config(read="1s"))
    _conn, ut = gw.pooled()
    _client, ct = serve(gw)
    gw.loop.advance(0.99)
    assert ct.take() == b""
    gw.loop.advance(0.02)
    assert parse_response(ct.take())[0] == 504
    assert ut.aborted
    gw.loop.advance(5)
    assert [o for _, o, *_ in ended] == ["timeout"]


def test_a_pooled_connection_takes_the_deadline_of_the_new_attempt(ended):
    """A connection pooled under a 30 s read timeout, then a reload to 1 s: 504 after 1 s."""
    gw = Gateway(config(read="30s"))
    conn, _ = gw.pooled()
    client, ct = serve(gw)
    conn.data_received(response())
    assert parse_response(ct.take())[0] == 200
    gw.reload(config(read="1s"))
    client.data_received(GET)
    gw.loop.advance(1.01)
    assert parse_response(ct.take())[0] == 504
    assert [o for _, o, *_ in ended] == ["ok", "timeout"]


def test_reset_before_the_head_is_502_and_after_it_resets_the_client(ended):
    gw = Gateway()
    _client, ct = serve(gw)
    conn, _ = gw.dial().succeed()
    conn.connection_lost(ConnectionResetError())
    assert parse_response(ct.take())[0] == 502
    _client2, ct2 = serve(gw)
    conn2, _ = gw.dial().succeed()
    conn2.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert ct2.take().endswith(b"hello\r\n")
    conn2.connection_lost(None)  # a clean close inside a chunked body: truncated
    assert ct2.aborted and ct2.linger_reset  # an RST, not a FIN
    assert [o for _, o, *_ in ended] == ["reset", "reset"]


def test_truncated_body_resets_an_http10_client_too(ended):
    gw = Gateway()
    _client, ct = serve(gw, b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n")
    conn, _ = gw.dial().succeed()
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1f4\r\n" + b"x" * 500)
    assert ct.data.endswith(b"x" * 500)
    conn.connection_lost(None)
    assert ct.aborted and ct.linger_reset


def test_invalid_response_is_502(ended):
    gw = Gateway()
    conn, _ = gw.pooled()
    _client, ct = serve(gw)
    conn.data_received(b"this is not HTTP\r\n\r\n")
    assert parse_response(ct.take())[0] == 502
    assert [o for _, o, *_ in ended] == ["invalid"]


def test_client_abort_ends_the_attempt_and_drops_the_upstream(ended):
    gw = Gateway()
    _conn, ut = gw.pooled()
    client, _ct = serve(gw)
    client.connection_lost(None)
    assert ut.aborted
    gw.loop.advance(1)
    assert [o for _, o, *_ in ended] == ["client_abort"]
    assert gw.host().in_flight == 0


def test_a_stale_pooled_connection_is_replaced_within_the_attempt(ended):
    gw = Gateway()
    stale, _ = gw.pooled()
    stale.reused = True
    client, ct = serve(gw, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
    stale.connection_lost(None)  # closed by the upstream before answering
    conn, ut = gw.dial().succeed()
    sent = ut.take()
    assert sent.startswith(b"POST /x HTTP/1.1\r\n") and sent.endswith(b"\r\n\r\nbody")
    conn.data_received(response())
    assert parse_response(ct.take())[0] == 200
    assert [o for _, o, *_ in ended] == ["ok"]
    assert client.current is None


def test_a_tunnel_ends_its_attempt_when_it_closes(ended):
    gw = Gateway()
    conn, ut = gw.pooled()
    client, ct = serve(
        gw, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    conn.data_received(
        b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nhi"
    )
    assert ct.take().endswith(b"\r\n\r\nhi")
    client.data_received(b"ping")
    assert ut.take().endswith(b"ping")
    assert ended == []
    conn.connection_lost(None)
    assert [o for _, o, *_ in ended] == ["ok"] and ct.closing


def test_a_steady_slow_upload_is_progress(ended):
    gw = Gateway(config(read="1s"))
    conn, ut = gw.pooled()
    client, ct = serve(gw, b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
    ut.buffer = 100  # the upstream reads, slowly: it is never the client we wait for
    for byte in b"abcde":
        gw.loop.advance(0.6)
        client.data_received(bytes([byte]))
    assert ut.take().endswith(b"\r\n\r\nabcde")
    gw.loop.advance(0.5)
    conn.data_received(response())
    assert parse_response(ct.take())[0] == 200
    assert [o for _, o, *_ in ended] == ["ok"]


def test_an_upstream_that_stops_reading_the_body_times_out(ended):
    gw = Gateway(config(read="1s"))
    _conn, ut = gw.pooled()
    _client, ct = serve(gw, b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc")
    ut.buffer = 1 << 20  # what we wrote is still in our buffer: the upstream is not reading
    gw.loop.advance(1.01)
    assert parse_response(ct.take())[0] == 504
    assert [o for _, o, *_ in ended] == ["timeout"]


def test_a_client_slow_to_send_its_body_is_not_an_upstream_timeout(ended):
    gw = Gateway(config(read="1s"))  # client_body: 20s
    _conn, ut = gw.pooled()
    _client, ct = serve(gw, b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc")
    gw.loop.advance(19.9)
    assert ct.take() == b"" and not ut.aborted
    gw.loop.advance(0.2)
    status, _, body = parse_response(ct.take())
    assert status == 408 and b"request body timeout" in body
    assert ut.aborted
    gw.loop.advance(1)
    assert [o for _, o, *_ in ended] == ["client_abort"]
    assert ct.closing


def test_a_client_that_stops_reading_is_not_an_upstream_timeout(ended):
    gw = Gateway(config(read="1s"))  # send: 30s
    conn, ut = gw.pooled()
    client, ct = serve(gw)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    gw.loop.advance(0.5)  # half of the upstream's allowance used
    client.pause_writing()  # the client's socket buffer is full
    assert not ut.reading
    gw.loop.advance(3.2)
    assert not ut.aborted and not ct.aborted
    client.resume_writing()
    assert ut.reading
    gw.loop.advance(0.4)  # 0.9 s of upstream silence in all: still within its 1 s
    assert not ut.aborted
    conn.data_received(b"67890")
    assert parse_response(ct.take())[2] == b"1234567890"
    assert [o for _, o, *_ in ended] == ["ok"]


def test_a_client_that_never_reads_again_is_reset_after_the_send_timeout(ended):
    gw = Gateway(config(read="1s"))
    conn, ut = gw.pooled()
    client, ct = serve(gw)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    client.pause_writing()
    gw.loop.advance(29.9)
    assert not ct.aborted
    gw.loop.advance(0.2)
    assert ct.aborted and ct.linger_reset and ut.aborted
    assert [o for _, o, *_ in ended] == ["client_abort"]


def test_two_upstreams_on_one_address_keep_their_own_settings():
    settings = config()
    settings["upstreams"]["small"] = {
        "targets": [{"url": "http://10.0.0.1:80"}],
        "pool": {"max_idle": 1},
        "timeouts": {"read": "1s"},
    }
    gw = Gateway(settings)
    small = gw.hosts.find("small", "10.0.0.1", 80)
    assert small is not gw.host() and small.max_idle == 1 and gw.host().max_idle == 64


def test_hosts_survive_a_reload_that_keeps_their_upstream_and_address():
    gw = Gateway()
    conn, ut = gw.pooled()
    host = gw.host()
    _client, ct = serve(gw)  # an attempt in flight across the reload
    gw.reload(config(read="2s"))
    assert gw.host() is host and host.in_flight == 1
    conn.data_received(response())
    assert parse_response(ct.take())[0] == 200 and host.idle == [conn]
    renamed = config()
    renamed["upstreams"]["other"] = renamed["upstreams"].pop("up")
    renamed["routes"][0]["upstream"] = "other"
    gw.reload(renamed)
    assert host.retired and host.idle == [] and ut.closing
    assert gw.hosts.find("other", "10.0.0.1", 80) is not host


def test_a_connection_closed_as_soon_as_it_opened_is_a_connect_failure(ended):
    gw = Gateway()
    _client, ct = serve(gw)
    dial = gw.dial()
    protocol = dial.factory()
    transport = FakeTransport(gw.loop, protocol)
    protocol.connection_made(transport)
    transport.close()  # the target died between the connect and the dial's completion
    dial._finish(("ok", (transport, protocol)))
    conn, ut = gw.dial().succeed()  # the next target
    assert ut.take().startswith(b"GET /x ")
    conn.data_received(response())
    assert parse_response(ct.take())[0] == 200
    assert [(a, o) for a, o, *_ in ended] == [("10.0.0.1", "connect_error"), ("10.0.0.2", "ok")]
