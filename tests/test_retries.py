"""In-process: retries and failover, the retry budget and circuit breakers, on a fake clock.

A retry is decided at the response seam: the retried response never reaches the client. Each
attempt ends once at the completion point; the request (and the body the gateway still holds)
goes to another target when there is one.
"""

from __future__ import annotations

import errno
import json

from fastgw.config.loader import validate
from fastgw.counters import WorkerCounters
from fastgw.upstream import budget as budget_module
from fastgw.upstream.breaker import FIELDS as BREAKER_FIELDS
from fastgw.upstream.budget import Budget
from fastgw.upstream.host import Hosts

from .inproc import FakeLoop, Gateway, config, parse_response, response
from .test_rate_limit import errors_of

GET = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"


def outcomes(ended: list) -> list[tuple[str, str]]:
    return [(address, outcome) for address, outcome, *_ in ended]


def three(**upstream) -> dict:
    return config(targets=("10.0.0.1", "10.0.0.2", "10.0.0.3"), **upstream)


def test_a_listed_status_is_retried_on_another_target_and_never_reaches_the_client(ended):
    gw = Gateway(config(retry_on=[503]))
    a, at = gw.pooled("10.0.0.1")
    b, bt = gw.pooled("10.0.0.2")
    client, ct = gw.client()
    client.data_received(GET)
    assert at.take().startswith(b"GET /x ")
    a.data_received(response(503, b"busy"))
    assert ct.take() == b""  # nothing of the 503 went out
    assert at.closing  # the rest of that response is not read: its connection closes
    assert bt.take().startswith(b"GET /x ")
    b.data_received(response(200, b"fine"))
    status, _, body = parse_response(ct.take())
    assert (status, body) == (200, b"fine")
    assert outcomes(ended) == [("10.0.0.1", "ok"), ("10.0.0.2", "ok")]
    assert client.current is None
    gw.loop.run_ready()
    assert gw.host("10.0.0.1").in_flight == gw.host("10.0.0.2").in_flight == 0


def test_retries_bound_the_attempts_and_the_last_answer_is_relayed(ended):
    for retries, attempts in ((None, 2), (2, 3), (0, 1)):
        settings = three(retry_on=[502], **({} if retries is None else {"retries": retries}))
        gw = Gateway(settings)
        conns = {addr: gw.pooled(addr) for addr in ("10.0.0.1", "10.0.0.2", "10.0.0.3")}
        client, ct = gw.client()
        client.data_received(GET)
        exchange = client.current
        answered = 0
        for conn, transport in conns.values():
            if transport.take():
                conn.data_received(response(502, b"bad %d" % answered))
                answered += 1
        status, _, body = parse_response(ct.take())
        assert status == 502 and body == b"bad %d" % (attempts - 1), (retries, body)
        assert answered == attempts == exchange.attempts, retries


def test_without_retry_on_a_5xx_is_relayed(ended):
    gw = Gateway()
    a, _ = gw.pooled("10.0.0.1")
    gw.pooled("10.0.0.2")
    _client, ct = gw.client()
    _client.data_received(GET)
    a.data_received(response(503, b"busy"))
    assert parse_response(ct.take())[:3:2] == (503, b"busy")
    assert outcomes(ended) == [("10.0.0.1", "ok")]


def test_a_single_target_is_retried_itself(ended):
    gw = Gateway(config(targets=("10.0.0.1",), retry_on=[503]))
    a, at = gw.pooled()
    _client, ct = gw.client()
    _client.data_received(GET)
    at.take()
    a.data_received(response(503))
    conn, ut = gw.dial().succeed()  # the first connection was closed: a fresh one
    assert ut.take().startswith(b"GET /x ")
    conn.data_received(response(200))
    assert parse_response(ct.take())[0] == 200
    assert outcomes(ended) == [("10.0.0.1", "ok"), ("10.0.0.1", "ok")]


POST = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabcdef"


def test_non_idempotent_methods_need_retry_non_idempotent_and_the_body_is_replayed():
    gw = Gateway(config(retry_on=[503]))
    a, _ = gw.pooled("10.0.0.1")
    gw.pooled("10.0.0.2")
    client, ct = gw.client()
    client.data_received(POST)
    a.data_received(response(503))
    assert parse_response(ct.take())[0] == 503  # POST: not retried by default

    gw = Gateway(config(retry_on=[503], retry_non_idempotent=True))
    a, _ = gw.pooled("10.0.0.1")
    b, bt = gw.pooled("10.0.0.2")
    client, ct = gw.client()
    client.data_received(POST[:-2])  # part of the body, then the 503, then the rest
    a.data_received(response(503))
    client.data_received(POST[-2:])
    sent = bt.take()
    assert sent.startswith(b"POST /p ") and sent.endswith(b"\r\n\r\nabcdef")
    b.data_received(response(200))
    assert parse_response(ct.take())[0] == 200


def test_a_body_beyond_retry_buffer_is_not_replayed():
    gw = Gateway(config(retry_on=[503], retry_non_idempotent=True, retry_buffer=4))
    a, _ = gw.pooled("10.0.0.1")
    gw.pooled("10.0.0.2")
    client, ct = gw.client()
    client.data_received(POST)
    a.data_received(response(503))
    assert parse_response(ct.take())[0] == 503


def test_timeout_and_reset_are_retried_when_listed(ended):
    gw = Gateway(config(read="1s", retry_on=["timeout", "reset"]))
    gw.pooled("10.0.0.1")
    b, bt = gw.pooled("10.0.0.2")
    client, ct = gw.client()
    client.data_received(GET)
    gw.loop.advance(1.0)  # 10.0.0.1 says nothing: timed out, and the request goes on
    assert bt.take().startswith(b"GET /x ")
    b.data_received(response(200))
    assert parse_response(ct.take())[0] == 200
    assert outcomes(ended) == [("10.0.0.1", "timeout"), ("10.0.0.2", "ok")]

    ended.clear()
    gw = Gateway(config(retry_on=["reset"]))
    b, _ = gw.pooled("10.0.0.2")
    client, ct = gw.client()
    client.data_received(GET)  # to 10.0.0.1 on a fresh connection
    conn, ut = gw.dial().succeed()
    ut.take()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n")  # part of a head...
    conn.connection_lost(None)  # ...then the upstream resets
    gw.loop.run_ready()
    b.data_received(response(200, b"second"))
    assert parse_response(ct.take())[2] == b"second"
    assert outcomes(ended) == [("10.0.0.1", "reset"), ("10.0.0.2", "ok")]


def test_connect_failures_are_retried_within_retries_only(ended):
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    for retries, tried in ((1, 2), (2, 3)):
        ended.clear()
        gw = Gateway(three(retries=retries))
        _client, ct = gw.client()
        _client.data_received(GET)
        for _ in range(tried):
            gw.dial().fail(refused)
        assert not gw.loop.dials
        status, _, body = parse_response(ct.take())
        assert status == 502 and b"refused" in body
        assert [o for _, o in outcomes(ended)] == ["connect_error"] * tried


def answered(gw: Gateway, status: int) -> bytes:
    """One request over pooled connections to both targets: the first answers `status`
    (body `first`); if the request is retried, the other answers 200 (body `retried`)."""
    a, _ = gw.pooled("10.0.0.1")
    b, _ = gw.pooled("10.0.0.2")
    client, ct = gw.client()
    client.data_received(GET)
    first = a if client.current.upstream_host.address == "10.0.0.1" else b
    first.data_received(response(status, b"first"))
    if client.current is not None:  # retried: the other target answers
        (b if first is a else a).data_received(response(200, b"retried"))
    return parse_response(ct.take())[2]


def test_the_budget_caps_retries_and_the_original_error_is_returned():
    gw = Gateway(config(retry_on=[503], retry_budget={"ratio": 0.0, "min_per_second": 1}))
    # One retry a second at most: the first is retried, the next two get the original 503.
    assert [answered(gw, 503) for _ in range(3)] == [b"retried", b"first", b"first"]
    gw.loop.advance(3.0)  # a few seconds later the floor allows retries again
    assert answered(gw, 503) == b"retried"


def test_the_budget_grows_with_the_requests_served():
    gw = Gateway(config(retry_on=[503], retry_budget={"ratio": 0.5, "min_per_second": 0}))
    assert answered(gw, 503) == b"first"  # no request served yet: 0.5 x 1 < 1 retry
    assert [answered(gw, 200) for _ in range(3)] == [b"first"] * 3
    # The k-th failing request after those 4 may be retried while k <= 0.5 x (4 + k).
    assert [answered(gw, 503) for _ in range(5)] == [b"retried"] * 4 + [b"first"]


def test_the_budget_is_counted_across_workers():
    settings = validate(config(retry_budget={"ratio": 0.5, "min_per_second": 0})).upstreams["up"]
    table = WorkerCounters(budget_module.FIELDS, workers=2)
    one = Budget("up", settings.retry_budget, table, 0, now=100.0)
    two = Budget("up", settings.retry_budget, table, 1, now=100.0)
    one.requests += 4  # worker 0 served 4 requests: 2 retries allowed in all
    assert not two.allow(100.5)  # worker 0 publishes its requests once a second
    one.tick(100.5)
    assert two.allow(101.0) and one.allow(101.0)
    assert not two.allow(101.0) and not one.allow(101.0)
    two.requests += 2  # published at its next tick (or retry check): one more fits
    two.tick(101.0)
    assert one.allow(101.0) and not one.allow(101.0)
    # A replaced worker goes on from its column: the totals never go back.
    again = Budget("up", settings.retry_budget, table, 1, now=101.0)
    assert (again.requests, again.retries) == (two.requests, two.retries)


# -- circuit breakers ----------------------------------------------------------------------


def breaker(**limits) -> dict:
    return {"max_connections": 100, "max_pending": 100, "max_requests": 100, **limits}


def test_max_requests_passes_a_busy_target_over_then_503_at_once():
    gw = Gateway(config(circuit_breaker=breaker(max_requests=1)))
    for addr in ("10.0.0.1", "10.0.0.2"):
        gw.pooled(addr)
        gw.pooled(addr)
    first, _ = gw.client()
    first.data_received(GET)
    second, _ = gw.client()
    second.data_received(GET)
    assert {first.current.upstream_host.address, second.current.upstream_host.address} == {
        "10.0.0.1",
        "10.0.0.2",
    }
    third, ct = gw.client()
    third.data_received(GET)
    status, _, body = parse_response(ct.take())
    assert status == 503 and json.loads(body)["error"] == "no upstream target available"
    assert not gw.loop.dials


def test_max_connections_and_max_pending_bound_new_connections():
    gw = Gateway(config(targets=("10.0.0.1",), circuit_breaker=breaker(max_connections=2)))
    clients = []
    for _ in range(3):
        client, ct = gw.client()
        client.data_received(GET)
        clients.append(ct)
    assert len(gw.loop.dials) == 2  # two connections opening; the third request is refused
    assert parse_response(clients[2].take())[0] == 503

    gw = Gateway(config(targets=("10.0.0.1",), circuit_breaker=breaker(max_pending=1)))
    gw.client()[0].data_received(GET)
    client, ct = gw.client()
    client.data_received(GET)
    assert len(gw.loop.dials) == 1 and parse_response(ct.take())[0] == 503
    conn, _ = gw.dial().succeed()  # connected: nothing waits, a new dial may start
    conn.data_received(response())
    client, ct = gw.client()
    client.data_received(GET)  # takes the pooled connection: no dial, not pending
    assert not gw.loop.dials and client.current.conn is conn


def test_breaker_counts_are_shared_by_the_workers():
    settings = validate(config(targets=("10.0.0.1",), circuit_breaker=breaker(max_requests=1)))
    upstream = settings.upstreams["up"]
    table = WorkerCounters(BREAKER_FIELDS, workers=2)
    loop = FakeLoop()
    one = Hosts(loop, table, 0).host("up", upstream.targets[0].url, upstream)  # type: ignore[arg-type]
    two = Hosts(loop, table, 1).host("up", upstream.targets[0].url, upstream)  # type: ignore[arg-type]
    assert one.breaker.admits(one) and two.breaker.admits(two)
    one.breaker.publish(one, 1)  # worker 0 starts an attempt
    one.in_flight += 1
    assert not two.breaker.admits(two)
    one.attempt_ended("ok", 0.0, 0.001, 0.001, loop.now)
    assert two.breaker.admits(two)
    table.forget_worker(0)
    assert table.total(one.breaker.slot, 0) == 0


def test_bad_retry_and_breaker_settings_are_errors_with_their_paths():
    upstream = {
        "targets": [{"url": "http://127.0.0.1:9"}],
        "retries": -1,
        "retry_on": [404, "slow", 503],
        "retry_buffer": "lots",
        "retry_non_idempotent": "yes",
        "retry_budget": {"ratio": -0.1, "min_per_second": "x", "ttl": 3},
        "circuit_breaker": {"max_connections": 0, "max_pending": -1, "max_requests": 1.5},
    }
    errors = errors_of({}, upstreams={"up": upstream})
    for expected in (
        "upstreams.up.retries: expected an integer >= 0 <= 10, got -1",
        "upstreams.up.retry_on[0]: expected timeout, reset or a status 500-599, got 404",
        "upstreams.up.retry_on[1]: expected timeout, reset or a status 500-599, got 'slow'",
        "upstreams.up.retry_buffer: expected a size",
        "upstreams.up.retry_non_idempotent: expected true or false, got 'yes'",
        "upstreams.up.retry_budget.ratio: expected a number >= 0 and <= 100, got -0.1",
        "upstreams.up.retry_budget.min_per_second: expected a number >= 0, got 'x'",
        "upstreams.up.retry_budget.ttl: unknown key",
        "upstreams.up.circuit_breaker.max_connections: expected an integer >= 1, got 0",
        "upstreams.up.circuit_breaker.max_pending: expected an integer >= 0, got -1",
        "upstreams.up.circuit_breaker.max_requests: expected an integer >= 1, got 1.5",
    ):
        assert any(line.startswith(expected) for line in errors), (expected, errors)
