"""Traffic split (weights, sticky keys, the sticky cookie, reloads) and mirroring, in-process
on a fake loop, and end to end with real upstream processes."""

from __future__ import annotations

import errno
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fastgw.config.loader import YamlLoader

from . import inproc
from .inproc import Gateway, parse_response, response
from .support import Client, Upstream, base_config, request, wait_for
from .support import Gateway as RealGateway
from .test_config import fastgw
from .test_rate_limit import errors_of

GET = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"


def split_config(upstream: dict, mirror: dict | None = None, **extra) -> dict:
    """Upstreams blue (10.0.1.1), green (10.0.2.1) and shadow (10.0.3.1); one route."""
    settings = inproc.config()
    settings["upstreams"] = {
        name: {"targets": [{"url": f"http://10.0.{i}.1:80"}], **extra}
        for i, name in ((1, "blue"), (2, "green"), (3, "shadow"))
    }
    settings["routes"][0]["upstream"] = upstream
    if mirror is not None:
        settings["routes"][0]["mirror"] = mirror
    return settings


def answer(gw: Gateway, request: bytes = GET) -> tuple[str, dict]:
    """Send `request` over a pooled connection; (the upstream it went to, response headers)."""
    client, ct = gw.client()
    for host in list(gw.hosts.hosts.values()):
        if not host.idle:
            pooled(gw, host)
    client.data_received(request)
    host = client.current.upstream_host
    conn = client.current.conn
    conn.data_received(response())
    status, headers, _ = parse_response(ct.take())
    assert status == 200
    return host.upstream, headers


def pooled(gw: Gateway, host) -> None:
    protocol = inproc.UpstreamProtocol(host)
    transport = inproc.FakeTransport(gw.loop, protocol)
    protocol.connection_made(transport)
    host.release(protocol, gw.loop.now)


def shares(gw: Gateway, count: int, request=lambda i: GET) -> Counter:
    return Counter(answer(gw, request(i))[0] for i in range(count))


def test_weights_choose_the_upstream_per_request():
    split = {"split": [{"upstream": "blue", "weight": 90}, {"upstream": "green", "weight": 10}]}
    got = shares(Gateway(split_config(split)), 2000)
    assert set(got) == {"blue", "green"}
    assert 0.86 < got["blue"] / 2000 < 0.94, got


def with_header(i: int) -> bytes:
    return b"GET /x HTTP/1.1\r\nHost: a\r\nX-User: u%d\r\n\r\n" % (i % 200)


def test_a_sticky_header_keeps_a_client_on_its_side_and_a_reload_moves_few():
    def settings(blue: int) -> dict:
        sides = [{"upstream": "blue", "weight": blue}, {"upstream": "green", "weight": 100 - blue}]
        return split_config({"split": sides, "sticky": "header:X-User"})

    gw = Gateway(settings(50))
    first = {i: answer(gw, with_header(i))[0] for i in range(200)}
    again = {i: answer(gw, with_header(i))[0] for i in range(200)}
    assert first == again  # sticky
    assert 70 < Counter(first.values())["blue"] < 130
    gw.reload(settings(60))  # 10 % more to blue: only clients in that slice move, to blue
    after = {i: answer(gw, with_header(i))[0] for i in range(200)}
    moved = [i for i in range(200) if after[i] != first[i]]
    assert all(first[i] == "green" and after[i] == "blue" for i in moved)
    assert 5 <= len(moved) <= 40, len(moved)


def test_the_sticky_cookie_is_set_when_absent_and_followed_when_present():
    sides = [{"upstream": "blue", "weight": 50}, {"upstream": "green", "weight": 50}]
    gw = Gateway(split_config({"split": sides, "sticky": "cookie:fgw-split"}))
    chosen, headers = answer(gw)
    assert headers["set-cookie"] == f"fgw-split={chosen}; Path=/; HttpOnly; SameSite=Lax"
    for name in ("blue", "green"):
        with_cookie = b"GET /x HTTP/1.1\r\nHost: a\r\nCookie: a=1; fgw-split=%s\r\n\r\n" % (
            name.encode()
        )
        for _ in range(5):
            got, headers = answer(gw, with_cookie)
            assert got == name and "set-cookie" not in headers
    # A side whose weight went to 0 (blue/green switch-over): its clients move and get a cookie.
    sides = [{"upstream": "blue", "weight": 0}, {"upstream": "green", "weight": 100}]
    gw.reload(split_config({"split": sides, "sticky": "cookie:fgw-split"}))
    got, headers = answer(gw, b"GET /x HTTP/1.1\r\nHost: a\r\nCookie: fgw-split=blue\r\n\r\n")
    assert got == "green" and headers["set-cookie"].startswith("fgw-split=green;")


# -- mirroring ---------------------------------------------------------------------------------


def mirrored(**mirror) -> Gateway:
    return Gateway(split_config("blue", {"upstream": "shadow", **mirror}))


def shadow_dials(gw: Gateway) -> list:
    return [d for d in gw.loop.dials if d.address == ("10.0.3.1", 80)]


def test_a_copy_goes_to_the_shadow_and_its_failures_never_reach_the_client():
    gw = mirrored()
    pooled(gw, gw.hosts.find("blue", "10.0.1.1", 80))
    client, ct = gw.client()
    client.data_received(GET)
    (dial,) = shadow_dials(gw)
    client.current.conn.data_received(response(200, b"real"))
    assert parse_response(ct.take())[2] == b"real"  # not waiting for the copy
    conn, transport = dial.succeed()
    assert transport.take().startswith(b"GET /x HTTP/1.1\r\nHost: a.test\r\n")
    conn.data_received(response(500, b"shadow failed"))
    assert ct.take() == b""  # the copy's answer is discarded
    shadow = gw.hosts.find("shadow", "10.0.3.1", 80)
    assert shadow.in_flight == 0 and shadow.idle == [conn]

    # Shadow down (refused), or silent until its read timeout: the client sees none of it.
    shadow.close_idle()
    gw.loop.run_ready()
    for fail in ("refused", "silent"):
        pooled(gw, gw.hosts.find("blue", "10.0.1.1", 80))
        client, ct = gw.client()
        client.data_received(GET)
        (dial,) = shadow_dials(gw)
        if fail == "refused":
            dial.fail(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
        else:
            dial.succeed()
        client.current.conn.data_received(response(200, b"real"))
        assert parse_response(ct.take())[2] == b"real"
    assert shadow.in_flight == 1
    gw.loop.advance(31.0)  # the silent copy times out (read: 30s by default)
    assert ct.take() == b"" and shadow.in_flight == 0


def test_copies_beyond_max_in_flight_are_dropped_and_counted():
    gw = mirrored(max_in_flight=2)
    statuses = []
    for _ in range(3):
        pooled(gw, gw.hosts.find("blue", "10.0.1.1", 80))
        client, ct = gw.client()
        client.data_received(GET)
        client.current.conn.data_received(response())
        statuses.append(parse_response(ct.take())[0])
    assert statuses == [200] * 3
    mirror = mirror_of(gw)
    assert (mirror.sent, mirror.dropped, len(shadow_dials(gw))) == (2, 1, 2)


def mirror_of(gw: Gateway):
    found = gw.site.runtime.router.match(b"GET", b"a", b"/x", ())
    return found.route.mirror


def test_the_body_is_copied_up_to_retry_buffer_and_percent_samples():
    gw = Gateway(split_config("blue", {"upstream": "shadow"}, retry_buffer=8))
    body = b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    pooled(gw, gw.hosts.find("blue", "10.0.1.1", 80))
    client, _ = gw.client()
    client.data_received(body + b"3\r\nabc\r\n")
    assert not shadow_dials(gw)  # the copy waits for the whole body
    client.data_received(b"2\r\nde\r\n0\r\n\r\n")
    _, transport = shadow_dials(gw)[0].succeed()
    assert transport.take().endswith(b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    client, _ = gw.client()
    client.data_received(body + b"9\r\n123456789\r\n0\r\n\r\n")  # 9 bytes > retry_buffer 8
    assert not shadow_dials(gw) and mirror_of(gw).dropped == 1

    gw = mirrored(percent=25)
    for _ in range(400):
        pooled(gw, gw.hosts.find("blue", "10.0.1.1", 80))
        client, _ = gw.client()
        client.data_received(GET)
        client.current.conn.data_received(response())
    assert 60 < mirror_of(gw).sent + mirror_of(gw).dropped < 140


def test_bad_split_and_mirror_settings_are_errors_with_their_paths():
    upstreams = {"blue": {"targets": [{"url": "http://127.0.0.1:9"}]}}
    routes = [
        {
            "match": {"paths": ["/a"]},
            "upstream": {"split": [{"upstream": "blue", "weight": 0}]},
        },
        {
            "match": {"paths": ["/b"]},
            "upstream": {
                "split": [{"upstream": "blue", "weight": 1}, {"upstream": "red", "weight": -1}],
                "sticky": "query:x",
            },
            "mirror": {"upstream": "grey", "percent": 101, "max_in_flight": 0},
        },
        {
            "match": {"paths": ["/c"]},
            "upstream": {"split": [{"upstream": "blue", "weight": 1}], "sticky": "consumer"},
        },
        {"match": {"paths": ["/d"]}, "upstream": ["blue"]},
    ]
    errors = errors_of({}, upstreams=upstreams, routes=routes)
    for expected in (
        "routes[0].upstream.split: expected at least one weight above 0",
        "routes[1].upstream.split[1].weight: expected an integer >= 0",
        "routes[1].upstream.sticky: expected cookie:NAME, header:NAME, ip or consumer, got 'query:x'",
        "routes[1].mirror.percent: expected a number >= 0 and <= 100, got 101",
        "routes[1].mirror.max_in_flight: expected an integer >= 1, got 0",
        "routes[2].upstream.sticky: sticky: consumer needs an authentication plugin",
        "routes[3].upstream: expected the name of an upstream or {split: [{upstream, weight}, ...]}",
    ):
        assert any(line.startswith(expected) for line in errors), (expected, errors)
    routes[1]["upstream"]["split"][1]["weight"] = 1
    routes[1]["upstream"]["sticky"] = "ip"
    routes[1]["mirror"] = {"upstream": "grey"}
    errors = errors_of({}, upstreams=upstreams, routes=routes[1:2])
    assert "routes[0].upstream.split[1].upstream: unknown upstream 'red' (known: blue)" in errors
    assert "routes[0].mirror.upstream: unknown upstream 'grey' (known: blue)" in errors


# -- end to end ------------------------------------------------------------------------------


def e2e_config(servers: list[Upstream], blue: int, **route) -> dict:
    config = base_config(servers[0].url, workers=2)
    config["upstreams"] = {
        name: {"targets": [{"url": server.url}]}
        for name, server in zip(("blue", "green", "shadow"), servers, strict=True)
    }
    config["routes"][0]["upstream"] = {
        "split": [
            {"upstream": "blue", "weight": blue},
            {"upstream": "green", "weight": 100 - blue},
        ],
        "sticky": "cookie:fgw-split",
    }
    config["routes"][0].update(route)
    return config


def test_split_shares_stickiness_and_a_reload_that_moves_traffic(three, tmp_path):
    blue, green, _ = three
    gw = RealGateway(tmp_path, e2e_config(three, 80)).start()
    try:
        ports = Counter()
        for _ in range(300):
            response = request(gw.port, "GET", "/echo")
            port = int(response.header("x-upstream-port"))
            ports[port] += 1
            side = "blue" if port == blue.port else "green"
            assert response.header("set-cookie").startswith(f"fgw-split={side};")
        assert 0.72 < ports[blue.port] / 300 < 0.88, ports
        # A client that keeps its cookie stays on its side, over new connections too.
        for name, server in (("blue", blue), ("green", green)):
            for _ in range(10):
                got = request(gw.port, "GET", "/echo", headers=[("Cookie", f"fgw-split={name}")])
                assert int(got.header("x-upstream-port")) == server.port
        # All traffic to green by SIGHUP, while a keep-alive connection stays open.
        with Client(gw.port) as client:
            assert client.request("GET", "/echo").status == 200
            gw.write_config(e2e_config(three, 0))
            gw.signal(signal.SIGHUP)
            gw.wait_log(r"config version 2 \(\w+\) live", count=2)

            def all_green() -> bool:
                got = client.request("GET", "/echo", headers=[("Cookie", "fgw-split=blue")])
                return int(got.header("x-upstream-port")) == green.port

            wait_for(all_green, what="blue's clients moved to green")
    finally:
        gw.stop()


@pytest.mark.parametrize("shadow_state", ["down", "slow", "failing"])
def test_the_mirror_never_affects_the_client(three, tmp_path, shadow_state):
    blue, _, shadow = three
    config = e2e_config(three, 100, mirror={"upstream": "shadow", "percent": 100})
    config["upstreams"]["shadow"]["timeouts"] = {"read": "5s"}
    if shadow_state == "slow":
        request(shadow.port, "GET", "/set-delay?delay=3")
    elif shadow_state == "failing":
        request(shadow.port, "GET", "/set-status?status=500")
    elif shadow_state == "down":
        shadow.stop()
    gw = RealGateway(tmp_path, config).start()
    try:
        started = time.monotonic()
        for _ in range(20):
            got = request(gw.port, "POST", "/echo", body=b"payload")
            assert got.status == 200 and int(got.header("x-upstream-port")) == blue.port
        assert time.monotonic() - started < 2.5  # never waiting on a 3 s shadow
        if shadow_state != "down":
            wait_for(lambda: shadow.stats()["requests"] >= 20, what="20 copies at the shadow")
    finally:
        gw.stop()


def readme_canary() -> str:
    """The README's canary example (the YAML block with a split)."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    return next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "split:" in b)


def test_the_readme_canary_example_routes_as_documented():
    gw = Gateway(yaml.load(readme_canary(), Loader=YamlLoader))
    tester = b"GET /checkout/pay HTTP/1.1\r\nHost: a\r\nX-Canary: always\r\n\r\n"
    assert {answer(gw, tester)[0] for _ in range(20)} == {"checkout-green"}
    plain = b"GET /checkout/pay HTTP/1.1\r\nHost: a\r\n\r\n"
    got = Counter()
    for _ in range(400):
        upstream, headers = answer(gw, plain)
        got[upstream] += 1
        assert headers["set-cookie"].startswith(f"fgw-split={upstream};")
    assert set(got) == {"checkout-blue", "checkout-green"} and got["checkout-green"] < 80, got


def test_fastgw_routes_shows_the_split_and_the_mirror(tmp_path):
    (tmp_path / "canary.yaml").write_text(readme_canary())
    result = fastgw("routes", "-c", str(tmp_path / "canary.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].split() == [
        "/checkout/*",
        "*",
        "*",
        "checkout",
        "checkout-blue:90,checkout-green:10",
        "+mirror:checkout-shadow",
        "-",
    ]
