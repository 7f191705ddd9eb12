"""Balancers: round_robin, least_conn, consistent_hash and ewma, on real hosts and through
gateway processes in front of real upstream processes."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from fastgw.upstream.balancer import ConsistentHash, LeastConn, PeakEwma
from fastgw.upstream.host import Host

from . import inproc
from .support import Gateway, Upstream, base_config, in_parallel, request, wait_for
from .test_rate_limit import errors_of


def hosts(count: int, loop: inproc.FakeLoop | None = None) -> list[Host]:
    loop = loop or inproc.FakeLoop()
    return [Host(loop, "up", f"10.0.0.{i + 1}", 80) for i in range(count)]  # type: ignore[arg-type]


# -- the balancers on their own ----------------------------------------------------------------


def test_least_conn_prefers_the_fewest_in_flight_for_the_weight_and_breaks_ties_at_random():
    a, b, c = hosts(3)
    balancer = LeastConn([a, b, c], [1, 1, 2])
    a.in_flight, b.in_flight, c.in_flight = 2, 1, 3  # loads 3, 2, 2 (c has twice the weight)
    picks = Counter(balancer.pick() for _ in range(600))
    assert set(picks) == {b, c} and min(picks.values()) > 200  # the tie, split at random
    assert balancer.pick(exclude={b, c}) is a
    idle = LeastConn(hosts(4), [1, 1, 1, 1])
    assert len(Counter(idle.pick() for _ in range(400))) == 4  # not always the first


def test_consistent_hash_moves_about_one_nth_of_the_keys_when_a_target_leaves():
    targets = hosts(10)
    key = lambda ex: ex  # noqa: E731 - the "request" is its key here (None: it has none)
    ring = ConsistentHash(targets, [1] * 10, key)
    keys = [b"user-%d" % i for i in range(10_000)]
    before = {k: ring.pick(k) for k in keys}
    shares = Counter(before.values())
    assert min(shares.values()) > 500 and max(shares.values()) < 1600  # roughly even
    gone = targets[3]
    smaller = ConsistentHash([t for t in targets if t is not gone], [1] * 9, key)
    after = {k: smaller.pick(k) for k in keys}
    moved = [k for k in keys if before[k] is not after[k]]
    assert all(before[k] is gone for k in moved)  # only the leaving target's keys move
    assert 0.06 < len(moved) / len(keys) < 0.14  # about 1/10
    # Another worker (or gateway) builds the same ring: the same key, the same target.
    again = ConsistentHash(targets, [1] * 10, key)
    assert all(again.pick(k) is before[k] for k in keys[:500])
    # Failover walks the ring; a request without the key goes round robin.
    first = ring.pick(b"user-1")
    assert ring.pick(b"user-1", exclude={first}) not in (first, None)
    assert len({ring.pick(None) for _ in range(20)}) == 10
    assert ConsistentHash([], [], key).pick(b"user-1") is None  # every target out of rotation


def test_ewma_takes_the_peak_at_once_and_decays_toward_faster_answers():
    loop = inproc.FakeLoop()
    (host,) = hosts(1, loop)
    host.ewma_decay, host.ewma, host.ewma_at = 10.0, 0.010, loop.now
    host.observe(0.200, True, loop.now)
    assert host.ewma == 0.200  # a slower answer: taken at once
    host.observe(0.010, True, loop.now + 10.0)  # one time constant later, a fast one
    assert host.ewma == pytest.approx(0.200 * 0.3679 + 0.010 * 0.6321, rel=1e-3)
    host.observe(0.001, False, loop.now + 10.0)  # a failure counts as twice the estimate
    assert host.ewma == pytest.approx(2 * (0.200 * 0.3679 + 0.010 * 0.6321), rel=1e-3)


def test_ewma_picks_the_cheaper_of_two_and_new_targets_start_at_the_median():
    loop = inproc.FakeLoop()
    fast, medium, slow, new = hosts(4, loop)
    for host, ewma in ((fast, 0.001), (medium, 0.002), (slow, 0.050)):
        host.ewma, host.ewma_at = ewma, loop.now
    balancer = PeakEwma([fast, medium, slow, new], [1, 1, 1, 1], 10.0, loop.now)
    assert new.ewma == 0.002  # the median of the known ones, not 0
    picks = Counter(balancer.pick() for _ in range(3000))
    assert picks[slow] == 0  # it loses every pair it is in
    assert picks[fast] > picks[medium] > 0
    fast.in_flight = 5  # busy: 0.001 x 6 costs more than 0.002 x 1
    assert Counter(balancer.pick() for _ in range(300))[fast] < 150
    # Not heard from for a minute, the slow target's estimate has decayed: it is tried again.
    loop.now += 60.0
    for host in (fast, medium, new):
        host.ewma_at = loop.now
    assert Counter(balancer.pick() for _ in range(3000))[slow] > 0


# -- config ------------------------------------------------------------------------------------


def test_bad_balancer_settings_are_errors_with_their_paths():
    def upstream_errors(**settings) -> list[str]:
        config = inproc.config()
        config["upstreams"]["up"].update(settings)
        return errors_of({}, None, upstreams=config["upstreams"])

    assert upstream_errors(balancer="fastest") == [
        "upstreams.up.balancer: expected one of round_robin, least_conn, consistent_hash, "
        "ewma, got 'fastest'"
    ]
    assert upstream_errors(balancer="consistent_hash") == [
        "upstreams.up.hash_on: required with balancer: consistent_hash (ip, consumer, path, "
        "header:NAME, cookie:NAME or query:NAME)"
    ]
    assert upstream_errors(hash_on="ip") == [
        "upstreams.up.hash_on: only consistent_hash uses hash_on (this upstream's balancer is "
        "round_robin)"
    ]
    assert upstream_errors(balancer="consistent_hash", hash_on="global") == [
        "upstreams.up.hash_on: expected ip, consumer, path, header:NAME, cookie:NAME or "
        "query:NAME, got 'global'"
    ]
    assert upstream_errors(balancer="ewma", ewma_decay="0s") == [
        "upstreams.up.ewma_decay: expected a duration above 0, got '0s'"
    ]
    assert upstream_errors(balancer="consistent_hash", hash_on="consumer") == [
        "routes[0].upstream: upstream 'up' hashes on the consumer (hash_on: consumer), but no "
        "authentication plugin runs on this route"
    ]


# -- end to end: real upstream processes ---------------------------------------------------------


def balanced(servers: list[Upstream], **upstream) -> dict:
    config = base_config(servers[0].url, workers=1)
    config["upstreams"]["up"] = {"targets": [{"url": s.url} for s in servers], **upstream}
    return config


def ports_of(port: int, count: int, headers: list | None = None, threads: int = 6) -> Counter:
    """Which upstream port answered each of `count` requests, sent from `threads` threads."""
    answered: Counter = Counter()
    lock = threading.Lock()

    def one_thread() -> None:
        for _ in range(count // threads):
            response = request(port, "GET", "/echo", headers=headers or [])
            with lock:
                answered[int(response.header("x-upstream-port"))] += 1

    in_parallel(one_thread, threads)
    return answered


def test_least_conn_sends_new_requests_away_from_a_busy_target(tmp_path):
    servers = [Upstream() for _ in range(2)]
    gw = Gateway(tmp_path, balanced(servers, balancer="least_conn")).start()
    try:
        held = threading.Thread(target=lambda: request(gw.port, "GET", "/slow?delay=2"))
        held.start()

        def arrived() -> bool:  # the gateway's connection plus this probe's own
            return any(request(s.port, "GET", "/stats").json()["open"] >= 2 for s in servers)

        wait_for(arrived, what="the slow request at an upstream")
        answered = [
            int(request(gw.port, "GET", "/echo").header("x-upstream-port")) for _ in range(10)
        ]
        assert len(set(answered)) == 1  # all on the target without the slow request
        held.join(10)
    finally:
        gw.stop()
        for server in servers:
            server.stop()


def test_consistent_hash_keeps_each_key_on_one_target(three, tmp_path):
    gw = Gateway(
        tmp_path, balanced(three, balancer="consistent_hash", hash_on="header:X-User")
    ).start()
    try:
        homes = {}
        for user in range(30):
            seen = {
                request(gw.port, "GET", "/echo", headers=[("X-User", f"u{user}")]).header(
                    "x-upstream-port"
                )
                for _ in range(4)
            }
            assert len(seen) == 1  # sticky
            homes[user] = seen.pop()
        assert len(set(homes.values())) == 3  # and spread
        without = ports_of(gw.port, 60, threads=3)
        assert len(without) == 3  # no key: round robin
    finally:
        gw.stop()


def test_ewma_moves_traffic_off_a_slow_target_and_back(three, tmp_path):
    gw = Gateway(tmp_path, balanced(three, balancer="ewma", ewma_decay="1s")).start()
    slow = three[0]
    try:
        before = ports_of(gw.port, 300)
        assert all(before[s.port] > 10 for s in three), before  # all used (by how fast each is)
        request(slow.port, "GET", "/set-delay?delay=0.1")
        ports_of(gw.port, 60)  # the slow answers come back and are seen
        during = ports_of(gw.port, 300)
        assert during[slow.port] < 0.1 * 300, during  # most of its traffic gone
        request(slow.port, "GET", "/set-delay?delay=0")
        deadline = time.monotonic() + 15
        while True:  # its estimate decays, it is tried again, and answers fast: back
            after = ports_of(gw.port, 300)
            if after[slow.port] > 0.2 * 300 or time.monotonic() > deadline:
                break
        assert after[slow.port] > 0.2 * 300, after
    finally:
        gw.stop()
