"""concurrency-limit: requests in flight per key across workers, the queue and its timeout,
and places released however an exchange ends (response, client abort, upstream failure,
worker crash)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from . import inproc
from .support import Gateway, base_config, in_parallel, request, wait_for
from .test_rate_limit import errors_of


def limited(**settings) -> inproc.Gateway:
    config = inproc.config(targets=("10.0.0.1",))
    config["routes"][0]["plugins"] = {"concurrency-limit": {"key": "global", **settings}}
    return inproc.Gateway(config)


def send(gw: inproc.Gateway) -> tuple[object, inproc.FakeTransport]:
    client, ct = gw.client()
    client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    return client, ct


def test_beyond_max_and_the_queue_503_and_a_finished_response_lets_the_next_in():
    gw = limited(max=2, max_queue=1, queue_timeout="1s")
    conns = [gw.pooled()[0] for _ in range(3)]
    first, second, third, fourth = (send(gw)[1] for _ in range(4))

    def forwarded() -> int:
        return sum(conn.exchange is not None for conn in conns)

    assert forwarded() == 2 and third.data == b""  # the third waits
    status, headers, body = inproc.parse_response(fourth.take())
    assert status == 503 and headers["retry-after"] == "1"
    assert b'"error":"too many requests in flight"' in body
    busy = [conn for conn in conns if conn.exchange is not None]
    busy[0].data_received(inproc.response())  # one response's last byte: a place frees
    answered = first if first.data else second
    assert inproc.parse_response(answered.take())[0] == 200
    gw.loop.run_ready()
    assert forwarded() == 2  # ... and goes to the waiting third at once
    gw.loop.advance(5.0)  # past the queue timeout: admitted, so no 503 (the upstream's 504)
    assert inproc.parse_response(third.take())[0] == 504


def test_a_request_that_waits_longer_than_queue_timeout_gets_503():
    gw = limited(max=1, max_queue=5, queue_timeout="250ms")
    gw.pooled()
    send(gw)
    _, waiting = send(gw)
    gw.loop.advance(0.24)
    assert waiting.data == b""
    gw.loop.advance(0.02)
    assert inproc.parse_response(waiting.take())[0] == 503
    _, later = send(gw)  # the queue was left: the next one queues again, it is not refused
    assert later.data == b""


def test_places_are_released_by_client_aborts_and_upstream_failures():
    gw = limited(max=1, max_queue=1, queue_timeout="10s")
    conns = [gw.pooled()[0] for _ in range(4)]

    def busy() -> list:
        return [conn for conn in conns if conn.exchange is not None]

    first, _ = send(gw)
    waiting, _ = send(gw)
    waiting.connection_lost(None)  # a waiting client leaves: the queue is empty again
    gw.loop.run_ready()
    _, third = send(gw)
    assert third.data == b""  # queued, not refused
    first.connection_lost(None)  # the client in flight leaves: its place goes to the third
    gw.loop.run_ready()
    assert len(busy()) == 1
    _, fourth = send(gw)
    busy()[0].data_received(b"this is not HTTP\r\n\r\n")  # the upstream fails: 502
    assert inproc.parse_response(third.take())[0] == 502
    gw.loop.run_ready()
    assert len(busy()) == 1 and fourth.data == b""  # ... and the fourth is in flight


def test_bad_configs_are_errors_with_their_paths():
    assert errors_of({"concurrency-limit": {"max": 0, "max_queue": -1, "key": "tenant"}}) == [
        "plugins.concurrency-limit.max: expected an integer >= 1, got 0",
        "plugins.concurrency-limit.key[0]: expected a key: consumer, ip, route, global, "
        "path, header:NAME, query:NAME or cookie:NAME, got 'tenant'",
        "plugins.concurrency-limit.max_queue: expected an integer >= 0, got -1",
    ]
    assert errors_of({"concurrency-limit": {"max": 1, "key": "consumer"}}) == [
        "routes[0].plugins: concurrency-limit (plugins.concurrency-limit) is keyed on the "
        "consumer or uses per_plan, but no authentication plugin runs on this route"
    ]


# -- end to end, real worker processes ------------------------------------------------------


def concurrency_config(upstream_url: str, workers: int, **settings) -> dict:
    config = base_config(upstream_url, workers=workers)
    config["plugins"] = {"concurrency-limit": {"key": "global", **settings}}
    return config


def test_at_most_max_in_flight_across_workers(upstream, tmp_path):
    gw = Gateway(tmp_path, concurrency_config(upstream.url, 2, max=3)).start()
    try:
        statuses = in_parallel(lambda: request(gw.port, "GET", "/slow?delay=1").status, 8)
        assert sorted(statuses) == [200] * 3 + [503] * 5, statuses  # 3, not 3 x workers
        # All released: the next three pass.
        assert (
            in_parallel(lambda: request(gw.port, "GET", "/slow?delay=0.2").status, 3) == [200] * 3
        )
    finally:
        gw.stop()


def test_a_worker_crash_releases_what_it_held(upstream, tmp_path):
    gw = Gateway(tmp_path, concurrency_config(upstream.url, 1, max=2)).start()
    try:
        holders = [
            threading.Thread(target=lambda: _quietly(gw.port, "/slow?delay=30")) for _ in range(2)
        ]
        for thread in holders:
            thread.start()
        wait_for(lambda: request(gw.port, "GET", "/x").status == 503, what="both places held")
        (worker,) = gw.worker_pids()
        os.kill(worker, signal.SIGKILL)
        gw.wait_log("exited unexpectedly")
        gw.wait_log("serving config version 1", count=2)
        started = time.monotonic()
        statuses = in_parallel(lambda: request(gw.port, "GET", "/slow?delay=0.2").status, 2)
        assert statuses == [200, 200], statuses  # nothing the dead worker held is held
        assert time.monotonic() - started < 5
        for thread in holders:
            thread.join(10)
    finally:
        gw.stop()


def _quietly(port: int, target: str) -> None:
    """Hold a place until the worker dies (again if a probe of the test took it first)."""
    with contextlib.suppress(Exception):  # its worker is killed mid-response
        for _ in range(100):
            if request(port, "GET", target, timeout=40).status != 503:
                return
