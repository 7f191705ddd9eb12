"""rate-limit with the redis backend: one limit shared by several gateway processes through a
real redis-server, and what happens when Redis is killed, restarted, or slow."""

from __future__ import annotations

import threading
import time

import trustme

from .support import Gateway, RedisServer, base_config, in_parallel, request, wait_for
from .test_rate_limit import finishing_times, flood

TIMEOUT = 0.05  # redis.timeout in these tests


def shared_limit(upstream_url: str, redis_url: str, limit: dict, workers: int = 1, **plugin):
    config = base_config(upstream_url, workers=workers)
    config["redis"] = {"url": redis_url, "timeout": f"{TIMEOUT * 1000:g}ms", "pool_size": 4}
    config["plugins"] = {
        "rate-limit": {"limits": [limit], "key": "global", "backend": "redis", **plugin}
    }
    return config


def timed(port: int, count: int) -> list[tuple[int, float]]:
    """`count` requests one after another: (status, seconds) of each."""
    out = []
    for _ in range(count):
        started = time.monotonic()
        status = request(port, "GET", "/x").status
        out.append((status, time.monotonic() - started))
    return out


def test_two_gateways_share_one_limit(upstream, redis_server, tmp_path):
    limit = {"rate": 30, "per": "1h"}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = Gateway(tmp_path / "one", shared_limit(upstream.url, redis_server.url, limit, 2))
    two = Gateway(tmp_path / "two", shared_limit(upstream.url, redis_server.url, limit))
    one.start()
    two.start()
    try:
        statuses: list[int] = []
        lock = threading.Lock()
        ports = [one.port, two.port]

        def flood_one() -> None:
            with lock:
                port = ports.pop()
            got = flood(port, 60, threads=4)
            with lock:
                statuses.extend(got)

        in_parallel(flood_one, 2)
        # Both gateways and all their workers spent the same 30: not 30 per gateway.
        assert len(statuses) == 120 and statuses.count(200) == 30, statuses.count(200)
        assert request(one.port, "GET", "/x").status == 429
        limited = request(two.port, "GET", "/x")
        assert limited.status == 429 and limited.header("retry-after") is not None
        assert limited.json()["error"] == "rate limit exceeded"
        assert limited.header("ratelimit-limit") == "30"
        assert limited.header("ratelimit-remaining") == "0"
        # Keys expire by themselves: every key Redis holds has a time to live.
        with redis_server.client() as client:
            keys = client.keys("fgw:rl:*")
            assert keys and all(0 < client.pttl(key) <= 3_600_000 for key in keys)
    finally:
        one.stop()
        two.stop()


def test_headers_count_down_through_redis(upstream, redis_server, tmp_path):
    config = shared_limit(upstream.url, redis_server.url, {"rate": 5, "per": "1m", "burst": 1})
    gw = Gateway(tmp_path, config).start()
    try:
        remaining = []
        for _ in range(7):
            response = request(gw.port, "GET", "/x")
            remaining.append((response.status, response.header("x-ratelimit-remaining")))
            assert response.header("ratelimit-limit") == "6"
        assert remaining == [(200, str(n)) for n in range(5, -1, -1)] + [(429, "0")]
    finally:
        gw.stop()


def check_failure_policy(upstream, tmp_path, policy: str, expected: int) -> None:
    server = RedisServer().start()
    config = shared_limit(
        upstream.url, server.url, {"rate": 3, "per": "1h"}, on_backend_failure=policy
    )
    gw = Gateway(tmp_path, config).start()
    try:
        assert [s for s, _ in timed(gw.port, 4)] == [200, 200, 200, 429]
        server.kill()
        during = timed(gw.port, 20)
        assert {status for status, _ in during} == {expected}, during
        # Each decision waited at most the timeout (plus the request's own time).
        assert max(seconds for _, seconds in during) < TIMEOUT + 0.25, during
        if expected == 503:
            response = request(gw.port, "GET", "/x")
            assert response.json()["error"] == "rate limit unavailable"
            assert response.header("retry-after") == "1"
        gw.wait_log(r"redis redis://127\.0\.0\.1:\d+/0: unreachable")
        # Redis back (empty: a restart without persistence): the limit works again by itself.
        server.start()
        wait_for(
            lambda: request(gw.port, "GET", "/x").status == 429,
            timeout=10,
            interval=0.05,
            what="the limit enforced again",
        )
        assert gw.proc.poll() is None
        # Warnings are rate-limited: one line per cause per 10 s, not one per request.
        assert gw.log().count("unreachable") <= 2
    finally:
        gw.stop()
        server.stop()


def test_redis_killed_with_allow_lets_requests_through_then_recovers(
    upstream, redis_installed, tmp_path
):
    check_failure_policy(upstream, tmp_path, "allow", 200)


def test_redis_killed_with_deny_answers_503_then_recovers(upstream, redis_installed, tmp_path):
    check_failure_policy(upstream, tmp_path, "deny", 503)


def test_a_slow_redis_costs_each_decision_at_most_the_timeout(upstream, redis_server, tmp_path):
    config = shared_limit(upstream.url, redis_server.url, {"rate": 1000, "per": "1s"})
    gw = Gateway(tmp_path, config).start()
    try:
        assert request(gw.port, "GET", "/x").header("ratelimit-limit") == "1000"
        # DEBUG SLEEP blocks the whole Redis for 1.5 s: every decision meanwhile times out.
        sleeper = threading.Thread(
            target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "1.5")
        )
        sleeper.start()
        time.sleep(0.1)  # let DEBUG SLEEP reach Redis before the timed requests
        during = timed(gw.port, 10)
        sleeper.join()
        assert all(status == 200 for status, _ in during), during  # allow (the default)
        assert max(seconds for _, seconds in during) < TIMEOUT + 0.25, during
        gw.wait_log(r"redis redis://127\.0\.0\.1:\d+/0: timeout \(no answer within 50 ms\)")
        wait_for(
            lambda: request(gw.port, "GET", "/x").header("ratelimit-limit") == "1000",
            what="decisions from Redis again",
        )
        # Timed-out connections were closed, not leaked: at most the pool (4) plus ours.
        with redis_server.client() as client:
            assert len(client.client_list()) <= 4 + 1
    finally:
        gw.stop()


def test_a_password_in_the_url_works_and_is_never_logged(upstream, redis_installed, tmp_path):
    server = RedisServer(password="s3cret-pw").start()
    config = shared_limit(upstream.url, server.url, {"rate": 2, "per": "1h"})
    gw = Gateway(tmp_path, config).start()
    try:
        assert [s for s, _ in timed(gw.port, 3)] == [200, 200, 429]
        server.kill()
        request(gw.port, "GET", "/x")
        log = gw.wait_log(r"redis redis://:\*\*\*@127\.0\.0\.1:\d+/0: unreachable")
        assert "s3cret-pw" not in log
    finally:
        gw.stop()
        server.stop()
    assert "s3cret-pw" not in gw.log()


def test_delay_mode_through_redis_waits_for_the_slot(upstream, redis_server, tmp_path):
    config = shared_limit(
        upstream.url, redis_server.url, {"rate": 10, "per": "1s"}, mode="delay", max_delay="1s"
    )
    gw = Gateway(tmp_path, config).start()
    try:
        finished = finishing_times(gw.port, 15)
        admitted = sorted(at for at, status in finished if status == 200)
        assert len(admitted) == 15, finished  # 10 at once, 5 more within max_delay
        for k, at in enumerate(admitted[10:], start=1):
            assert at >= 0.1 * k - 0.05, (k, at)  # released at the rate, on Redis's clock
    finally:
        gw.stop()


def test_rediss_with_a_private_ca(upstream, redis_installed, tmp_path):
    authority = trustme.CA()
    server_cert = authority.issue_cert("127.0.0.1")
    cert, key, ca = (tmp_path / "redis.pem", tmp_path / "redis.key", tmp_path / "ca.pem")
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    server = RedisServer(password="tls-pw", tls=(str(cert), str(key), str(ca))).start()
    config = shared_limit(upstream.url, server.url, {"rate": 2, "per": "1h"})
    config["redis"]["timeout"] = "2s"  # room for the first TLS handshake on a loaded machine
    gw = Gateway(tmp_path, config).start()
    try:
        assert [s for s, _ in timed(gw.port, 3)] == [200, 200, 429]  # decided in Redis, over TLS
        with server.client() as client:
            assert client.keys("fgw:rl:*")
    finally:
        gw.stop()
        server.stop()
    assert "tls-pw" not in gw.log()
