"""Routing end to end: 404/405/503/502, strip_prefix, preserve_host, hosts, headers, failover."""

import pytest

from .support import Gateway, free_port, raw_exchange, request, status_of


@pytest.fixture(scope="module")
def routed(upstream, tmp_path_factory):
    dead = f"http://127.0.0.1:{free_port()}"
    config = {
        "server": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "upstreams": {
            "up": {"targets": [{"url": upstream.url}]},
            "drained": {"targets": [{"url": upstream.url, "weight": 0}]},
            "dead": {"targets": [{"url": dead}], "timeouts": {"connect": "1s"}},
            "half": {"targets": [{"url": dead, "weight": 5}, {"url": upstream.url, "weight": 1}]},
        },
        "routes": [
            {"name": "api", "match": {"paths": ["/api/*"]}, "upstream": "up", "strip_prefix": True},
            {"name": "keep", "match": {"paths": ["/keep/*"]}, "upstream": "up"},
            {
                "name": "items",
                "match": {"paths": ["/items/{id}"], "methods": ["GET", "DELETE"]},
                "upstream": "up",
            },
            {
                "name": "rehost",
                "match": {"paths": ["/rehost"]},
                "upstream": "up",
                "preserve_host": False,
            },
            {
                "name": "vhost",
                "match": {"paths": ["/v"], "hosts": ["*.example.com"]},
                "upstream": "up",
            },
            {
                "name": "v2",
                "match": {"paths": ["/hdr"], "headers": {"X-Version": "2"}},
                "upstream": "up",
            },
            {"name": "drained", "match": {"paths": ["/drained"]}, "upstream": "drained"},
            {"name": "dead", "match": {"paths": ["/dead"]}, "upstream": "dead"},
            {"name": "half", "match": {"paths": ["/half"]}, "upstream": "half"},
        ],
    }
    gw = Gateway(tmp_path_factory.mktemp("routed"), config).start()
    yield gw
    gw.stop()


def test_404_and_405(routed):
    missing = request(routed.port, "GET", "/nothing/here")
    assert missing.status == 404
    assert missing.json()["error"] == "no route matched the request"
    assert missing.header("content-type") == "application/json"
    refused = request(routed.port, "POST", "/items/7")
    assert refused.status == 405
    assert refused.header("allow") == "DELETE, GET, HEAD"
    assert request(routed.port, "DELETE", "/items/7").status == 200
    assert request(routed.port, "GET", "/items/7/more").status == 404


def test_strip_prefix_and_not(routed):
    assert request(routed.port, "GET", "/api/users/1?q=2").json()["target"] == "/users/1?q=2"
    assert request(routed.port, "GET", "/api").json()["target"] == "/"
    assert request(routed.port, "GET", "/keep/users/1").json()["target"] == "/keep/users/1"


def test_preserve_host(routed, upstream):
    kept = dict(request(routed.port, "GET", "/keep/x", host="client.test").json()["headers"])
    assert kept["Host"] == "client.test"
    replaced = dict(request(routed.port, "GET", "/rehost", host="client.test").json()["headers"])
    assert replaced["Host"] == f"127.0.0.1:{upstream.port}"
    assert replaced["X-Forwarded-Host"] == "client.test"


def test_hosts_and_headers(routed):
    assert request(routed.port, "GET", "/v", host="api.example.com").status == 200
    assert request(routed.port, "GET", "/v", host="example.org").status == 404
    assert request(routed.port, "GET", "/hdr", headers=[("X-Version", "2")]).status == 200
    assert request(routed.port, "GET", "/hdr", headers=[("X-Version", "1")]).status == 404


def test_503_when_no_target_is_available(routed):
    response = request(routed.port, "GET", "/drained")
    assert response.status == 503
    assert response.json() == {
        "error": "no upstream target available",
        "status": 503,
        "request_id": response.header("x-request-id"),
    }


def test_502_when_the_upstream_refuses(routed):
    response = request(routed.port, "GET", "/dead")
    assert response.status == 502
    assert response.json()["error"] == "upstream refused the connection"
    assert "connect refused" in routed.log()


def test_failover_to_the_next_target_on_connect_failure(routed):
    for _ in range(6):
        assert request(routed.port, "GET", "/half").status == 200


def test_expect_continue_with_no_route_gets_the_error_and_a_close(routed):
    data = raw_exchange(
        routed.port,
        b"POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    assert status_of(data) == 404
    assert b"100 Continue" not in data
    assert b"connection: close" in data.lower()


def test_post_to_a_missing_route_keeps_the_connection(routed):
    data = raw_exchange(
        routed.port,
        b"POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /api/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert data.count(b"HTTP/1.1 404") == 1
    assert data.count(b"HTTP/1.1 200") == 1
