"""request-size-limit: a route's largest request body, smaller or larger than the server's,
enforced from Content-Length before the body is read, and as a chunked body passes it."""

import socket

import pytest

from fastgw.config.loader import ConfigError, validate

from . import inproc
from .support import Gateway, base_config, read_until_closed, request, status_of


def settings(upstream_url: str) -> dict:
    config = base_config(upstream_url, limits={"max_body_bytes": "1KiB"})
    config["routes"] = [
        {
            "name": "big",
            "match": {"paths": ["/big/*"]},
            "upstream": "up",
            "plugins": {"request-size-limit": {"max_body_bytes": "10KiB"}},
        },
        {
            "name": "small",
            "match": {"paths": ["/small/*"]},
            "upstream": "up",
            "plugins": {"request-size-limit": {"max_body_bytes": 100}},
        },
        {"name": "all", "match": {"paths": ["/*"]}, "upstream": "up"},
    ]
    return config


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    gateway = Gateway(tmp_path_factory.mktemp("size"), settings(upstream.url)).start()
    yield gateway
    gateway.stop()


def test_a_route_may_accept_more_or_less_than_the_server(gw):
    assert request(gw.port, "POST", "/big/x", body=b"x" * 5000).json()["body_bytes"] == 5000
    assert request(gw.port, "POST", "/small/x", body=b"x" * 100).status == 200
    refused = request(gw.port, "POST", "/small/x", body=b"x" * 101)
    assert refused.status == 413 and refused.json()["error"] == "request body too large"
    assert request(gw.port, "POST", "/other", body=b"x" * 1024).status == 200
    assert request(gw.port, "POST", "/other", body=b"x" * 1025).status == 413  # server's limit
    assert request(gw.port, "POST", "/big/x", body=b"x" * (10 * 1024 + 1)).status == 413


def test_content_length_is_refused_before_the_body_is_sent(gw):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /small/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        answer = read_until_closed(sock)  # no body byte sent: answered and closed
    assert status_of(answer) == 413


@pytest.mark.parametrize("target, limit", [("/small/x", 100), ("/big/x", 10 * 1024)])
def test_a_chunked_body_is_refused_as_it_passes_the_limit(gw, target, limit):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % target.encode()
        )
        chunk = b"x" * 64
        sent = 0
        while sent <= limit:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        answer = read_until_closed(sock)  # the terminating chunk never came
    assert status_of(answer) == 413


def test_the_limit_is_compiled_into_the_route_with_no_hook():
    config = inproc.config()
    config["routes"][0]["plugins"] = {"request-size-limit": {"max_body_bytes": 0}}
    gw = inproc.Gateway(config)
    route = gw.site.runtime.router.match(b"GET", b"a", b"/x", ()).route
    assert route.max_body == 0 and not route.hooked and route.access == ()
    gw.pooled()
    client, ct = gw.client()
    client.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
    assert inproc.parse_response(ct.take())[0] == 413


def test_a_bad_size_is_an_error_with_its_path():
    config = inproc.config()
    config["routes"][0]["plugins"] = {"request-size-limit": {"max_body_bytes": "lots"}}
    with pytest.raises(ConfigError) as caught:
        validate(config)
    assert caught.value.errors == [
        "routes[0].plugins.request-size-limit.max_body_bytes: expected a size such as 16384, "
        "16KiB or 10MiB, got 'lots'"
    ]


def test_a_413_before_the_plugins_still_gets_the_route_s_response_hooks(caplog):
    config = inproc.config(targets=("10.0.0.1",))
    config["routes"][0]["plugins"] = {
        "request-size-limit": {"max_body_bytes": 10},
        "cors": {"origins": ["*"]},
        "rate-limit": {"limits": [{"rate": 5, "per": "1s"}]},
    }
    gw = inproc.Gateway(config)
    client, ct = gw.client()
    client.data_received(
        b"POST /x HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example\r\nContent-Length: 100\r\n\r\n"
    )
    status, headers, _ = inproc.parse_response(ct.take())
    assert status == 413 and headers["access-control-allow-origin"] == "*"
    assert "ratelimit-limit" not in headers  # the limit had not run: nothing to say
    assert "plugin error" not in caplog.text
