"""In-process: the response seam. The upstream connection hands the response over in pieces
and the exchange decides what reaches the client: byte for byte the same however the response
is split, and through `on_response_body` hooks where a route has them."""

from __future__ import annotations

import h11
import pytest

from fastgw.plugins.base import Plugin
from fastgw.plugins.registry import PLUGINS, register

from .inproc import Gateway, config, parse_response, response


class Shout(Plugin):
    """Upper-cases the body and adds `!` at its end: it changes the length."""

    name = "test-shout"

    def on_response_body(self, ex, data: bytes, last: bool) -> bytes:
        return data.upper() + (b"!" if last else b"")


class Observe(Plugin):
    """Counts the body and passes it unchanged: the upstream's Content-Length can stay."""

    name = "test-observe"
    changes_length = False
    seen: list[tuple[bytes, bool]] = []

    def on_response_body(self, ex, data: bytes, last: bool) -> bytes:
        Observe.seen.append((data, last))
        return data


class Broken(Plugin):
    name = "test-broken"

    def on_response_body(self, ex, data: bytes, last: bool) -> bytes:
        raise RuntimeError("a bug in a body hook")


@pytest.fixture(autouse=True, scope="module")
def test_plugins():
    """Known only while this module runs: other tests list the known plugins."""
    for plugin in (Shout, Observe, Broken):
        register(plugin)
    yield
    for plugin in (Shout, Observe, Broken):
        del PLUGINS[plugin.name]


def with_plugins(plugins: dict) -> dict:
    settings = config(targets=("10.0.0.1",))
    settings["routes"][0]["plugins"] = plugins
    return settings


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\nX-Up: 1\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: done\r\n\r\n"
)


def decoded(data: bytes) -> tuple:
    """Status, fields, body and trailers as a strict client sees them (chunk sizes may differ:
    each piece that arrives is passed on as its own chunk)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    events = []
    while (event := conn.next_event()) is not h11.NEED_DATA:
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            break
    body = b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
    return events[0].status_code, list(events[0].headers), body, list(events[-1].headers)


@pytest.mark.parametrize("answer", [response(body=b"a body of 20 bytes!!"), CHUNKED])
def test_a_response_split_at_every_offset_reaches_the_client_the_same(answer):
    def relayed(pieces: list[bytes]) -> tuple:
        gw = Gateway(config(targets=("10.0.0.1",)))
        conn, _ = gw.pooled()
        client, ct = gw.client()
        client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        for piece in pieces:
            conn.data_received(piece)
        assert client.current is None, "the exchange did not finish"
        assert gw.host().idle == [conn]  # and the connection went back to the pool
        return decoded(ct.take())

    whole = relayed([answer])
    assert whole[0] == 200 and whole[2] in (b"a body of 20 bytes!!", b"hello world")
    assert whole[3] == ([(b"x-t", b"done")] if answer is CHUNKED else [])
    assert relayed([answer[i : i + 1] for i in range(len(answer))]) == whole
    for cut in range(1, len(answer)):
        assert relayed([answer[:cut], answer[cut:]]) == whole, cut


def serve(gw: Gateway, request: bytes = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"):
    conn, _ut = gw.pooled()
    client, ct = gw.client()
    client.data_received(request)
    return conn, ct


def test_a_body_hook_that_changes_the_length_reframes_the_response():
    gw = Gateway(with_plugins({"test-shout": {}}))
    conn, ct = serve(gw)
    conn.data_received(response(body=b"hello"))
    status, headers, body = parse_response(ct.take())
    assert status == 200 and body == b"HELLO!"
    assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"
    # An HTTP/1.0 client gets the body delimited by the close.
    conn, ct = serve(gw, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
    conn.data_received(response(body=b"hi"))
    data = ct.take()
    assert data.endswith(b"\r\n\r\nHI!") and b"Connection: close" in data and ct.closing


def test_a_body_hook_that_keeps_the_length_keeps_content_length():
    Observe.seen.clear()
    gw = Gateway(with_plugins({"test-observe": {}}))
    conn, ct = serve(gw)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    conn.data_received(b"67890")
    _status, headers, body = parse_response(ct.take())
    assert body == b"1234567890" and headers["content-length"] == "10"
    assert Observe.seen == [(b"12345", False), (b"67890", False), (b"", True)]


def test_body_hooks_do_not_run_without_a_body():
    Observe.seen.clear()
    gw = Gateway(with_plugins({"test-observe": {}}))
    conn, ct = serve(gw, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert parse_response(ct.take(), "HEAD")[0] == 200
    conn, ct = serve(gw)
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert parse_response(ct.take())[0] == 204
    assert Observe.seen == []


def test_a_failing_body_hook_resets_the_client(caplog):
    gw = Gateway(with_plugins({"test-broken": {}}))
    conn, ct = serve(gw)
    conn.data_received(response(body=b"hello"))
    assert ct.aborted and ct.linger_reset
    assert "a bug in a body hook" in caplog.text
    gw.loop.advance(1)
    assert gw.host().in_flight == 0
