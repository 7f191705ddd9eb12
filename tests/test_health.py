"""Passive health: failures eject a target for a while, doubled on each ejection, half-open
return with one trial request, never more than max_ejected_percent out; through the real
completion point and cluster on a fake clock, and through a gateway in front of real
upstream processes."""

from __future__ import annotations

import time

from fastgw.config.loader import validate
from fastgw.upstream.host import Hosts

from . import inproc
from .support import Gateway, Upstream, base_config, request, wait_for
from .test_rate_limit import errors_of

PASSIVE = {
    "max_failures": 2,
    "window": "10s",
    "ejection": "5s",
    "max_ejection": "12s",
    "max_ejected_percent": 50,
}


def cluster_of(count: int, **passive):
    """The live cluster of an upstream of `count` targets with passive health, on a fake loop."""
    from fastgw.upstream.cluster import Cluster

    config = inproc.config(targets=tuple(f"10.0.0.{i + 1}" for i in range(count)))
    config["upstreams"]["up"]["health_check"] = {"passive": {**PASSIVE, **passive}}
    upstream = validate(config).upstreams["up"]
    loop = inproc.FakeLoop()
    hosts = Hosts(loop)  # type: ignore[arg-type]
    members = [hosts.host("up", target.url, upstream) for target in upstream.targets]
    return loop, Cluster("up", members, upstream, now=loop.now), members


def fail(host, loop, outcome: str = "timeout") -> None:
    host.in_flight += 1
    host.attempt_ended(outcome, 0.0, -1.0, 0.001, loop.now)


def succeed(host, loop) -> None:
    host.in_flight += 1
    host.attempt_ended("ok", 0.0, 0.001, 0.001, loop.now)


def rotation(cluster, picks: int = 30) -> set:
    return {cluster.balancer.pick() for _ in range(picks)}


def send_trial(cluster, host) -> None:
    """Picks until the half-open `host` gets its one trial request (within a round)."""
    picks = [cluster.balancer.pick() for _ in range(len(cluster.hosts) + 1)]
    assert picks.count(host) == 1, picks


def test_failures_eject_then_a_trial_decides_and_ejections_double(caplog):
    loop, cluster, (a, b, c) = cluster_of(3)
    fail(a, loop)
    assert rotation(cluster) == {a, b, c}  # one failure: still in
    succeed(a, loop)  # a success does not clear the window's failures
    fail(a, loop)
    assert rotation(cluster) == {b, c}
    assert "target 10.0.0.1:80 ejected for 5s: 2 failures in 10s (last: timeout)" in caplog.text
    loop.advance(5.0)  # half-open: back in the rotation until one request goes to it
    assert "back on trial" in caplog.text
    picks = [cluster.balancer.pick() for _ in range(6)]
    assert picks.count(a) == 1  # one trial, then out while it runs
    fail(a, loop, "connect_error")  # the trial fails: out for twice as long
    assert "ejected for 10s: its trial request failed (connect_error)" in caplog.text
    loop.advance(9.9)
    assert a not in rotation(cluster)
    loop.advance(0.2)
    send_trial(cluster, a)
    succeed(a, loop)  # the trial succeeds: healthy, ejections counted from 0 again
    assert "target 10.0.0.1:80 healthy again" in caplog.text
    assert rotation(cluster) == {a, b, c}
    fail(a, loop)
    fail(a, loop)
    assert "ejected for 5s" in caplog.text.rsplit("healthy again", 1)[1]


def test_ejections_are_capped_at_max_ejection():
    loop, cluster, (a, b) = cluster_of(2)
    for _ in range(5):
        fail(a, loop, "invalid")  # not in `on`
    assert rotation(cluster) == {a, b}
    for seconds in (5, 10, 12, 12):  # 5, 10, then capped at max_ejection
        fail(a, loop)
        fail(a, loop)
        assert rotation(cluster) == {b}
        loop.advance(seconds - 0.01)
        assert a not in rotation(cluster)
        loop.advance(0.02)
        send_trial(cluster, a)


def test_never_more_than_max_ejected_percent_out():
    loop, cluster, (a, b) = cluster_of(2)
    fail(a, loop)
    fail(a, loop)
    fail(b, loop)
    fail(b, loop)  # would leave nothing: 2 of 2 is over 50 %
    assert rotation(cluster) == {b}


def test_listed_statuses_count_and_all_targets_out_is_an_immediate_503():
    settings = inproc.config(targets=("10.0.0.1",))
    settings["upstreams"]["up"]["health_check"] = {
        "passive": {**PASSIVE, "max_ejected_percent": 100}
    }
    gw = inproc.Gateway(settings)
    for status in (500, 500, 500, 503, 503):  # 500 is not in `on`; two 503s eject
        conn, _ = gw.pooled()
        client, ct = gw.client()
        client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        conn.data_received(inproc.response(status=status))
        assert inproc.parse_response(ct.take())[0] == status
    client, ct = gw.client()
    client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    status, _, body = inproc.parse_response(ct.take())
    assert status == 503 and b"no upstream target available" in body
    assert gw.loop.dials == []  # at once: no connection attempt, no connect timeout


def test_bad_passive_settings_are_errors_with_their_paths():
    config = inproc.config()
    config["upstreams"]["up"]["health_check"] = {
        "passive": {"max_failures": 0, "on": ["timeout", 404, "bogus"], "max_ejected_percent": 101}
    }
    assert errors_of({}, None, upstreams=config["upstreams"]) == [
        "upstreams.up.health_check.passive.max_failures: expected an integer >= 1, got 0",
        "upstreams.up.health_check.passive.max_ejected_percent: expected an integer >= 0 "
        "<= 100, got 101",
        "upstreams.up.health_check.passive.on[1]: expected connect_error, timeout, reset, "
        "invalid or a status 500-599, got 404",
        "upstreams.up.health_check.passive.on[2]: expected connect_error, timeout, reset, "
        "invalid or a status 500-599, got 'bogus'",
    ]


def test_a_killed_target_is_ejected_and_returns_after_its_trial(two, tmp_path):
    config = base_config(two[0].url)
    config["upstreams"]["up"] = {
        "targets": [{"url": s.url} for s in two],
        "health_check": {"passive": {**PASSIVE, "ejection": "1s", "on": ["connect_error"]}},
    }
    gw = Gateway(tmp_path, config).start()
    dead = two[0]
    try:
        dead.stop()
        # Every request still succeeds (failover), and the dead target leaves the rotation.
        assert all(request(gw.port, "GET", "/echo").status == 200 for _ in range(6))
        gw.wait_log(rf"target 127\.0\.0\.1:{dead.port} ejected for 1s")
        two[0] = Upstream(port=dead.port)  # back on the same port
        wait_for(
            lambda: request(gw.port, "GET", "/echo").status == 200 and "healthy again" in gw.log(),
            what="the trial request and the target healthy again",
        )
    finally:
        gw.stop()


# -- active health: probes from one process, verdicts followed by every worker ------------------


ACTIVE = {"path": "/health", "interval": "300ms", "timeout": "500ms", "healthy": 1, "unhealthy": 2}


def probed(servers: list[Upstream], workers: int = 2, **active) -> dict:
    config = base_config(servers[0].url, workers=workers)
    config["upstreams"]["up"] = {
        "targets": [{"url": s.url} for s in servers],
        "health_check": {"active": {**ACTIVE, **active}},
    }
    return config


def answered_by(port: int, count: int = 12) -> set[int]:
    """The upstream ports that answered `count` requests, each on a new connection (so both
    workers answer some)."""
    return {int(request(port, "GET", "/echo").header("x-upstream-port")) for _ in range(count)}


def probes_at(server: Upstream) -> int:
    return request(server.port, "GET", "/stats").json()["probes"]


def test_active_probes_once_per_gateway_and_every_worker_follows(two, tmp_path):
    good, bad = two
    gw = Gateway(tmp_path, probed(two)).start()
    try:
        assert answered_by(gw.port) == {good.port, bad.port}
        request(bad.port, "GET", "/set-health?status=503")
        gw.wait_log(
            rf"target 127\.0\.0\.1:{bad.port} unhealthy \(2 probes failed, the last: status 503\)"
        )
        wait_for(lambda: answered_by(gw.port) == {good.port}, timeout=2, what="both workers")
        # One prober per gateway, not one per worker: one probe per interval per target.
        first, started = probes_at(good), time.monotonic()
        wait_for(lambda: time.monotonic() - started > 1.5, what="time passing", interval=0.1)
        probes = probes_at(good) - first
        assert 3 <= probes <= 1.5 / 0.3 + 2, probes  # with two workers probing it would be ~10
        request(bad.port, "GET", "/set-health?status=200")
        gw.wait_log(rf"target 127\.0\.0\.1:{bad.port} healthy \(1 probes passed\)")
        wait_for(lambda: answered_by(gw.port) == {good.port, bad.port}, timeout=3, what="back")
        # Every target unhealthy: 503 at once, not a wait on connect timeouts.
        for server in two:
            request(server.port, "GET", "/set-health?status=500")
        gw.wait_log(rf"target 127\.0\.0\.1:{good.port} unhealthy")

        def refused_at_once() -> bool:
            started = time.monotonic()
            response = request(gw.port, "GET", "/echo")
            return response.status == 503 and time.monotonic() - started < 0.5

        wait_for(refused_at_once, timeout=3, what="an immediate 503")
        assert b"no upstream target available" in request(gw.port, "GET", "/echo").body
    finally:
        gw.stop()


def test_initial_unhealthy_targets_wait_for_their_first_passing_probe(two, tmp_path):
    gw = Gateway(tmp_path, probed(two, workers=1, initial="unhealthy", interval="1s")).start()
    try:
        assert request(gw.port, "GET", "/echo").status == 503  # not yet probed
        wait_for(lambda: request(gw.port, "GET", "/echo").status == 200, what="probed healthy")
    finally:
        gw.stop()


def test_bad_active_settings_are_errors_with_their_paths():
    config = inproc.config()
    config["upstreams"]["up"]["health_check"] = {
        "active": {"path": "health", "interval": "0s", "expect_status": [99], "initial": "maybe"}
    }
    assert errors_of({}, None, upstreams=config["upstreams"]) == [
        "upstreams.up.health_check.active.path: expected a path such as /health, got 'health'",
        "upstreams.up.health_check.active.interval: expected a duration above 0, got '0s'",
        "upstreams.up.health_check.active.expect_status[0]: expected a status 100-599, got 99",
        "upstreams.up.health_check.active.initial: expected one of healthy, unhealthy, got 'maybe'",
    ]
