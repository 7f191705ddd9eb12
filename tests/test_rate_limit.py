"""rate-limit: GCRA buckets exact across the workers of one gateway, reject and delay modes,
key kinds, headers on every response, state kept across reloads and worker crashes."""

from __future__ import annotations

import copy
import os
import signal
import threading
import time

import pytest

from fastgw.config.loader import ConfigError, validate
from fastgw.limits import Limit, Limiter
from fastgw.shared import SharedTable

from . import inproc
from .support import Client, Gateway, base_config, in_parallel, request, wait_for

# -- the bucket, on a clock given by the test ------------------------------------------------


def test_a_bucket_holds_rate_plus_burst_and_refills_at_the_rate():
    limiter = Limiter([Limit(10, 1.0, 5, salt=1)], SharedTable(1024, False), max_delay=0.0)
    now = 1000.0
    answers = [limiter.decide(b"k", now) for _ in range(16)]
    assert [wait == 0.0 for wait, *_ in answers] == [True] * 15 + [False]
    assert [remaining for _, _, remaining, _ in answers[:15]] == list(range(14, -1, -1))
    wait, capacity, remaining, reset = answers[15]
    assert capacity == 15 and remaining == 0
    assert wait == pytest.approx(-0.1) and reset == pytest.approx(1.5)  # retry after one interval
    assert limiter.decide(b"k", now + 0.1)[0] == 0.0  # one more after 1/10 s
    assert limiter.decide(b"k", now + 0.1)[0] < 0
    assert limiter.decide(b"other key", now)[0] == 0.0


def test_the_tightest_limit_decides_and_a_refused_request_costs_nothing():
    per_second, per_minute = Limit(5, 1.0, 0, salt=1), Limit(8, 60.0, 0, salt=2)
    limiter = Limiter([per_second, per_minute], SharedTable(1024, False), max_delay=0.0)
    now = 50.0
    assert [limiter.decide(b"k", now)[0] == 0.0 for _ in range(7)] == [True] * 5 + [False] * 2
    # The refused two did not spend the minute's budget: 3 of 8 are left after one second.
    later = [limiter.decide(b"k", now + 1.0) for _ in range(4)]
    assert [w == 0.0 for w, *_ in later] == [True, True, True, False]
    assert later[2][1:3] == (8, 0)  # the minute limit is now the tightest: 0 of 8 left


def test_delay_mode_admits_within_max_delay_and_holds_the_slot():
    limiter = Limiter([Limit(2, 1.0, 0, salt=1)], SharedTable(1024, False), max_delay=1.2)
    waits = [limiter.decide(b"k", 7.0)[0] for _ in range(5)]
    # Two at once, then one each 0.5 s while the wait stays within 1.2 s; waiting ones hold
    # their slot, so the fifth would wait 1.5 s: refused.
    assert waits == pytest.approx([0.0, 0.0, 0.5, 1.0, -1.5])


def test_a_full_table_replaces_the_bucket_closest_to_full():
    table = SharedTable(16, False)
    limiter = Limiter([Limit(1, 100.0, 0, salt=3)], table, max_delay=0.0)
    for i in range(200):  # far more keys than slots: no error, no unbounded growth
        assert limiter.decide(b"key-%d" % i, 10.0)[0] == 0.0
    assert len(table.memory) == (16 + 8) * 16


# -- in-process, through the real exchange ---------------------------------------------------


def gateway(plugins: dict, **extra) -> inproc.Gateway:
    settings = inproc.config(targets=("10.0.0.1",))
    settings["routes"][0]["plugins"] = plugins
    settings.update(extra)
    return inproc.Gateway(settings)


def ask(gw: inproc.Gateway, head: bytes = b"") -> tuple[int, dict, bytes]:
    conn, _ = gw.pooled()
    client, ct = gw.client()
    client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n" + head + b"\r\n")
    if conn.exchange is not None:
        conn.data_received(inproc.response())
    return inproc.parse_response(ct.take())


def test_headers_on_admitted_and_limited_responses():
    gw = gateway({"rate-limit": {"limits": [{"rate": 2, "per": "10s"}], "key": "global"}})
    status, headers, _ = ask(gw)
    assert status == 200
    assert (headers["ratelimit-limit"], headers["ratelimit-remaining"]) == ("2", "1")
    assert headers["ratelimit-reset"] == "5" and headers["x-ratelimit-remaining"] == "1"
    assert ask(gw)[0] == 200
    status, headers, body = ask(gw)
    assert status == 429 and headers["retry-after"] == "5"
    assert headers["ratelimit-remaining"] == "0" and headers["x-ratelimit-limit"] == "2"
    assert b'"error":"rate limit exceeded"' in body and b'"status":429' in body
    gw.loop.advance(5.0)
    assert ask(gw)[0] == 200


def test_keys_separate_buckets_and_a_missing_part_shares_one():
    gw = gateway(
        {"rate-limit": {"limits": [{"rate": 1, "per": "1m"}], "key": ["header:X-Tenant", "route"]}}
    )
    assert ask(gw, b"X-Tenant: a\r\n")[0] == 200
    assert ask(gw, b"X-Tenant: a\r\n")[0] == 429
    assert ask(gw, b"X-Tenant: b\r\n")[0] == 200
    assert ask(gw)[0] == 200  # no header: the key part is "-"
    assert ask(gw)[0] == 429  # ... shared by every request without it, never let through


def test_cookie_and_path_keys():
    gw = gateway({"rate-limit": {"limits": [{"rate": 1, "per": "1m"}], "key": "cookie:sid"}})
    assert ask(gw, b"Cookie: theme=dark; sid=abc\r\n")[0] == 200
    assert ask(gw, b'Cookie: sid="abc"\r\n')[0] == 429  # the same session, quoted
    assert ask(gw, b"Cookie: sid=xyz\r\n")[0] == 200
    assert ask(gw, b"Cookie: other=abc\r\n")[0] == 200  # no such cookie: the key "-"
    assert ask(gw)[0] == 429
    by_path = gateway({"rate-limit": {"limits": [{"rate": 1, "per": "1m"}], "key": "path"}})
    conn, _ = by_path.pooled()
    client, ct = by_path.client()
    client.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.data_received(inproc.response())
    assert inproc.parse_response(ct.take())[0] == 200
    assert ask(by_path)[0] == 200  # /x: another path, another bucket
    assert ask(by_path)[0] == 429


def test_the_ip_key_behind_trusted_proxies_is_the_forwarded_client():
    gw = gateway(
        {"rate-limit": {"limits": [{"rate": 1, "per": "1h"}], "key": "ip"}},
        server={"trusted_proxies": ["127.0.0.0/8"]},
    )
    assert ask(gw, b"X-Forwarded-For: 192.0.2.1\r\n")[0] == 200
    assert ask(gw, b"X-Forwarded-For: 192.0.2.1\r\n")[0] == 429
    assert ask(gw, b"X-Forwarded-For: 192.0.2.2\r\n")[0] == 200
    without = gateway({"rate-limit": {"limits": [{"rate": 1, "per": "1h"}], "key": "ip"}})
    assert ask(without, b"X-Forwarded-For: 192.0.2.1\r\n")[0] == 200
    assert ask(without, b"X-Forwarded-For: 192.0.2.2\r\n")[0] == 429  # the peer, not XFF


def test_status_and_headers_settings():
    gw = gateway(
        {
            "rate-limit": {
                "limits": [{"rate": 1, "per": "1h"}],
                "key": "query:user",
                "status": 503,
                "headers": False,
            }
        }
    )
    status, headers, _ = ask(gw)
    assert status == 200 and "ratelimit-limit" not in headers
    status, headers, _ = ask(gw)
    assert status == 503 and headers["retry-after"] == "3600" and "x-ratelimit-reset" not in headers


def test_delay_mode_in_process_releases_on_the_clock():
    gw = gateway(
        {
            "rate-limit": {
                "limits": [{"rate": 2, "per": "1s"}],
                "key": "global",
                "mode": "delay",
                "max_delay": "1s",
            }
        }
    )
    conns = [gw.pooled()[0] for _ in range(5)]
    clients = []
    for _ in range(5):
        client, ct = gw.client()
        client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        clients.append(ct)

    def forwarded() -> int:
        return sum(conn.exchange is not None for conn in conns)

    # 2 at once, 2 waiting for their slot (0.5 s and 1 s), the fifth beyond max_delay: 429.
    assert forwarded() == 2
    assert [inproc.parse_response(ct.take())[0] if ct.data else None for ct in clients] == [
        None,
        None,
        None,
        None,
        429,
    ]
    gw.loop.advance(0.49)
    assert forwarded() == 2  # not before its slot
    gw.loop.advance(0.02)
    assert forwarded() == 3
    gw.loop.advance(0.49)
    assert forwarded() == 4


def test_per_plan_numbers_replace_the_entry_s():
    settings = inproc.config(targets=("10.0.0.1",))
    settings["plans"] = {
        "gold": {"rate_limit": [{"rate": 3, "per": "1h"}]},
        "quota-only": {"quota": {"limit": 10, "per": "day"}},
    }
    settings["consumers"] = [
        {"name": "alice", "plan": "gold", "key_auth": {"keys": ["a-key"]}},
        {"name": "bob", "key_auth": {"keys": ["b-key"]}},
        {"name": "carol", "plan": "quota-only", "key_auth": {"keys": ["c-key"]}},
    ]
    settings["routes"][0]["plugins"] = {
        "key-auth": {},
        "rate-limit": {"per_plan": True, "limits": [{"rate": 1, "per": "1h"}], "key": "consumer"},
    }
    gw = inproc.Gateway(settings)
    alice = [ask(gw, b"apikey: a-key\r\n") for _ in range(4)]
    assert [status for status, _, _ in alice] == [200, 200, 200, 429]
    assert alice[0][1]["ratelimit-limit"] == "3"
    for key in (b"b-key", b"c-key"):  # no plan, or a plan without rate_limit: the entry's own
        assert [ask(gw, b"apikey: " + key + b"\r\n")[0] for _ in range(2)] == [200, 429]


def test_per_plan_needs_authentication_and_plans_must_exist():
    assert errors_of({}, {"rate-limit": {"limits": [{"rate": 1, "per": 1}], "per_plan": True}}) == [
        "routes[0].plugins: rate-limit (routes[0].plugins.rate-limit) is keyed on the consumer "
        "or uses per_plan, but no authentication plugin runs on this route"
    ]
    assert errors_of(
        {},
        plans={"gold": {"rate_limit": [{"rate": 0, "per": "1s"}], "quota": {"limit": 5}}},
        consumers=[{"name": "a", "plan": "silver"}, {"name": "b", "plan": "gold"}],
    ) == [
        "plans.gold.rate_limit[0].rate: expected an integer >= 1, got 0",
        "plans.gold.quota.per: required key is missing",
        "consumers[0].plan: unknown plan 'silver' (known: none defined)",
        "consumers[1].plan: unknown plan 'gold' (known: none defined)",
    ]


def errors_of(plugins: dict, route_plugins: dict | None = None, **document) -> list[str]:
    settings = inproc.config()
    settings["plugins"] = plugins
    if route_plugins is not None:
        settings["routes"][0]["plugins"] = route_plugins
    settings.update(document)
    with pytest.raises(ConfigError) as caught:
        validate(settings)
    return caught.value.errors


def test_bad_configs_are_errors_with_their_paths():
    errors = errors_of(
        {
            "rate-limit": {
                "limits": [{"rate": 0, "per": "1s"}, {"rate": 5, "per": "0s", "burst": -1}],
                "key": ["ip", "form:x", "planet"],
                "mode": "queue",
                "backend": "redis",
            }
        }
    )
    assert errors == [
        "plugins.rate-limit.limits[0].rate: expected an integer >= 1, got 0",
        "plugins.rate-limit.limits[1].per: expected a duration above 0, got '0s'",
        "plugins.rate-limit.limits[1].burst: expected an integer >= 0, got -1",
        "plugins.rate-limit.key[1]: expected a key: consumer, ip, route, global, path, "
        "header:NAME, query:NAME or cookie:NAME, got 'form:x'",
        "plugins.rate-limit.key[2]: expected a key: consumer, ip, route, global, path, "
        "header:NAME, query:NAME or cookie:NAME, got 'planet'",
        "plugins.rate-limit.mode: expected one of reject, delay, got 'queue'",
    ]
    assert errors_of({"rate-limit": {"limits": []}}) == [
        "plugins.rate-limit.limits: expected at least 1 item(s), got 0"
    ] or errors_of({"rate-limit": {"limits": []}})[0].startswith("plugins.rate-limit.limits")
    assert errors_of(
        {}, {"rate-limit": {"limits": [{"rate": 1, "per": 1}], "backend": "redis"}}
    ) == [
        "routes[0].plugins.rate-limit.backend: the redis backend needs a top-level 'redis:' "
        "section (url, timeout, pool_size); none is configured"
    ]


def test_a_consumer_key_needs_an_authentication_plugin_on_the_route():
    limit = {"limits": [{"rate": 1, "per": 1}], "key": "consumer"}
    assert errors_of({"rate-limit": limit}) == [
        "routes[0].plugins: rate-limit (plugins.rate-limit) is keyed on the consumer or uses "
        "per_plan, but no authentication plugin runs on this route"
    ]
    fine = inproc.config()
    fine["plugins"] = {"rate-limit": limit}
    fine["routes"][0]["plugins"] = {"key-auth": {}}
    validate(fine)


# -- end to end, real worker processes ------------------------------------------------------


def limited(upstream_url: str, workers: int, limit: dict, **plugin) -> dict:
    config = base_config(upstream_url, workers=workers)
    config["plugins"] = {"rate-limit": {"limits": [limit], "key": "global", **plugin}}
    return config


def flood(port: int, total: int, threads: int = 8) -> list[int]:
    """`total` requests from `threads` threads, each on a new connection (so that every worker
    gets some); the statuses."""
    statuses: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(total // threads):
            status = request(port, "GET", "/x").status
            with lock:
                statuses.append(status)

    in_parallel(worker, threads)
    return statuses


@pytest.mark.parametrize("workers", [2, 4])
def test_admission_is_exact_across_workers(upstream, tmp_path, workers):
    gw = Gateway(tmp_path, limited(upstream.url, workers, {"rate": 50, "per": "1h"})).start()
    try:
        statuses = flood(gw.port, 200)
        assert sorted(set(statuses)) == [200, 429]
        assert statuses.count(200) == 50, statuses.count(200)  # not 50 x workers
        prefixes = set()
        for _ in range(30):
            with Client(gw.port) as client:
                response = client.request("GET", "/x")
                prefixes.add(response.header("x-request-id").split("-")[0])
                assert response.status == 429
        assert len(prefixes) >= 2  # several workers answered, all with the shared state
    finally:
        gw.stop()


def test_state_survives_a_reload_and_a_worker_crash(upstream, tmp_path):
    config = limited(upstream.url, 2, {"rate": 5, "per": "1h"})
    gw = Gateway(tmp_path, config).start()
    try:
        assert flood(gw.port, 8, threads=2).count(200) == 5
        # A reload that keeps the limit: still spent.
        same = copy.deepcopy(config)
        same["server"]["limits"] = {"max_body_bytes": "5MiB"}
        gw.write_config(same)
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"config version 2 \(\w+\) live", count=2)
        assert request(gw.port, "GET", "/x").status == 429
        # A worker killed: nothing lost.
        for pid in gw.worker_pids():
            os.kill(pid, signal.SIGKILL)
        gw.wait_log("exited unexpectedly", count=2)
        wait_for(lambda: len(gw.worker_pids()) == 2, what="workers back")
        gw.wait_log("serving config version 2", count=2)
        assert request(gw.port, "GET", "/x").status == 429
        # A reload that changes the limit starts it afresh.
        changed = copy.deepcopy(same)
        changed["plugins"]["rate-limit"]["limits"] = [{"rate": 6, "per": "1h"}]
        gw.write_config(changed)
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"config version 3 \(\w+\) live", count=2)
        assert flood(gw.port, 8, threads=2).count(200) == 6
    finally:
        gw.stop()


def finishing_times(port: int, count: int) -> list[tuple[float, int]]:
    """`count` requests at once: when each finished (seconds from the start) and its status."""
    finished: list[tuple[float, int]] = []
    started = time.monotonic()

    def one() -> None:
        status = request(port, "GET", "/x").status
        finished.append((time.monotonic() - started, status))

    in_parallel(one, count)
    return finished


def test_delay_mode_releases_waiting_requests_at_the_rate(upstream, tmp_path):
    config = limited(upstream.url, 2, {"rate": 10, "per": "1s"}, mode="delay", max_delay="1s")
    gw = Gateway(tmp_path, config).start()
    try:
        finished = finishing_times(gw.port, 25)
        admitted = sorted(at for at, status in finished if status == 200)
        refused = [at for at, status in finished if status == 429]
        # 10 at once (the bucket), then one each 0.1 s while the wait stays within max_delay:
        # 20 pass; the rest are refused at once.
        assert len(admitted) == 20 and len(refused) == 5, finished
        assert all(at < 0.5 for at in refused)
        waited = admitted[10:]
        for k, at in enumerate(waited, start=1):
            assert at >= 0.1 * k - 0.05, (k, at)  # released at the rate, measured
        assert waited[-1] < 1.5
    finally:
        gw.stop()


def test_a_process_that_dies_holding_the_lock_does_not_stop_the_others(caplog):
    table = SharedTable(1024, shared_lock=True)
    limiter = Limiter([Limit(3, 60.0, 0, salt=9)], table, max_delay=0.0)
    assert limiter.decide(b"k", 1.0)[0] == 0.0
    child = os.fork()
    if child == 0:  # a worker killed inside its critical section
        table.lock()
        os._exit(0)
    os.waitpid(child, 0)
    started = time.monotonic()
    assert limiter.decide(b"k", 1.0)[0] == 0.0  # taken over, the count intact
    assert time.monotonic() - started < 1.0
    assert f"process {child} died holding the lock; taken over" in caplog.text
    assert limiter.decide(b"k", 1.0)[0] == 0.0
    assert limiter.decide(b"k", 1.0)[0] < 0  # 3 of 3 spent: the state was shared and kept
