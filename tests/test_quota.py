"""quota: calendar windows, headers, plans, durability in server.state_dir (restart, reload,
kill -9, a corrupt file) and shared counts through Redis."""

from __future__ import annotations

import copy
import os
import signal
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from fastgw.quotas import QuotaTable, bounds

from . import inproc
from .support import Gateway, base_config, demo, request, wait_for
from .test_rate_limit import errors_of

UTC = ZoneInfo("UTC")


def at(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


# -- calendar windows ------------------------------------------------------------------------


def test_windows_follow_the_calendar_in_their_time_zone():
    now = at("2026-02-14T13:45:10")
    assert bounds("hour", UTC, now) == (at("2026-02-14T13:00:00"), at("2026-02-14T14:00:00"))
    assert bounds("day", UTC, now) == (at("2026-02-14T00:00:00"), at("2026-02-15T00:00:00"))
    assert bounds("month", UTC, now) == (at("2026-02-01T00:00:00"), at("2026-03-01T00:00:00"))
    december = at("2026-12-31T23:59:59")
    assert bounds("month", UTC, december)[1] == at("2027-01-01T00:00:00")
    # A monthly quota resets at 00:00 on the 1st where the zone says, not in UTC.
    paris = ZoneInfo("Europe/Paris")
    start, end = bounds("month", paris, at("2026-03-31T23:30:00"))  # 01:30 on April 1st there
    assert (start, end) == (
        at("2026-04-01T00:00:00", "Europe/Paris"),
        at("2026-05-01", "Europe/Paris"),
    )
    # A day with a daylight-saving change is 23 hours long; an hour in India starts at :30 UTC.
    day = bounds("day", paris, at("2026-03-29T12:00:00", "Europe/Paris"))
    assert day[1] - day[0] == 23 * 3600
    kolkata = bounds("hour", ZoneInfo("Asia/Kolkata"), at("2026-01-01T10:40:00"))
    assert kolkata == (at("2026-01-01T10:30:00"), at("2026-01-01T11:30:00"))


def test_the_table_counts_up_to_the_limit_and_frees_ended_windows():
    table = QuotaTable(16)
    assert [table.spend(7, 100.0, 3, 50.0) for _ in range(4)] == [
        (True, 1),
        (True, 2),
        (True, 3),
        (False, 3),
    ]
    assert table.spend(7, 200.0, 3, 100.0) == (True, 1)  # the window ended: its slot is free
    for tag in range(1, 200):  # far more keys than slots: no error, no growth
        table.spend(tag * 16, 500.0, 3, 100.0)
    snapshot = table.snapshot()
    other = QuotaTable(64)  # another size: counts are placed again
    assert other.restore(snapshot, 100.0) > 0
    with pytest.raises(ValueError):
        other.restore(b"FGWQUOT1" + b"\0" * 40, 100.0)


# -- in-process, through the real exchange ---------------------------------------------------


def quota_gateway(quota: dict, plans: dict | None = None) -> inproc.Gateway:
    settings = inproc.config(targets=("10.0.0.1",))
    settings["consumers"] = [
        {"name": "alice", "plan": "gold", "key_auth": {"keys": ["a-key"]}},
        {"name": "bob", "key_auth": {"keys": ["b-key"]}},
    ]
    settings["plans"] = plans or {"gold": {"quota": {"limit": 4, "per": "month"}}}
    settings["routes"][0]["plugins"] = {"key-auth": {}, "quota": quota}
    return inproc.Gateway(settings)


def ask(gw: inproc.Gateway, key: bytes) -> tuple[int, dict, bytes]:
    from .test_rate_limit import ask as ask_route

    return ask_route(gw, b"apikey: " + key + b"\r\n")


def test_headers_429_and_reset_at_the_window_end():
    gw = quota_gateway({"limit": 2, "per": "day"})
    gw.wall = at("2026-05-10T23:59:00")
    status, headers, _ = ask(gw, b"b-key")
    assert status == 200
    assert (headers["x-quota-limit"], headers["x-quota-remaining"]) == ("2", "1")
    assert headers["x-quota-reset"] == "60"
    assert ask(gw, b"b-key")[1]["x-quota-remaining"] == "0"
    status, headers, body = ask(gw, b"b-key")
    assert status == 429 and headers["retry-after"] == "60" and headers["x-quota-remaining"] == "0"
    assert b'"error":"quota exceeded"' in body
    gw.wall = at("2026-05-11T00:00:01")  # a new day: a new count
    status, headers, _ = ask(gw, b"b-key")
    assert status == 200 and headers["x-quota-remaining"] == "1"


def test_per_plan_quota_replaces_the_entry_s():
    gw = quota_gateway({"limit": 1, "per": "day", "per_plan": True})
    assert [ask(gw, b"a-key")[0] for _ in range(5)] == [200] * 4 + [429]  # gold: 4 a month
    assert ask(gw, b"a-key")[1]["x-quota-limit"] == "4"
    assert [ask(gw, b"b-key")[0] for _ in range(2)] == [200, 429]  # no plan: the entry's 1


def test_bad_quota_configs_are_errors_with_their_paths():
    assert errors_of(
        {},
        {
            "key-auth": {},
            "quota": {"limit": 0, "per": "week", "timezone": "Mars/Olympus", "key": "cookie"},
        },
    ) == [
        "routes[0].plugins.quota.limit: expected an integer >= 1, got 0",
        "routes[0].plugins.quota.per: expected one of hour, day, month, got 'week'",
        "routes[0].plugins.quota.key[0]: expected a key: consumer, ip, route, global, "
        "path, header:NAME, query:NAME or cookie:NAME, got 'cookie'",
        "routes[0].plugins.quota.timezone: expected a time zone such as UTC or Europe/Paris, "
        "got 'Mars/Olympus'",
    ]
    assert errors_of({}, {"quota": {"limit": 5, "per": "day"}}) == [
        "routes[0].plugins: quota (routes[0].plugins.quota) is keyed on the consumer or uses "
        "per_plan, but no authentication plugin runs on this route"
    ]
    assert errors_of(
        {}, {"quota": {"limit": 5, "per": "day", "key": "ip", "backend": "redis"}}
    ) == [
        "routes[0].plugins.quota.backend: the redis backend needs a top-level 'redis:' section "
        "(url, timeout, pool_size); none is configured"
    ]


# -- end to end: durable counts ----------------------------------------------------------------


def quota_config(upstream_url: str, limit: int = 5, workers: int = 2, **quota) -> dict:
    config = base_config(upstream_url, workers=workers)
    config["plugins"] = {"quota": {"limit": limit, "per": "month", "key": "ip", **quota}}
    return config


def spend(port: int, count: int) -> list[tuple[int, str | None]]:
    out = []
    for _ in range(count):
        response = request(port, "GET", "/x")
        out.append((response.status, response.header("x-quota-remaining")))
    return out


def saved_counts(tmp_path) -> list[int]:
    path = tmp_path / "fastgw-state" / "quotas.state"
    if not path.exists():
        return []
    table = QuotaTable(1 << 16)
    table.restore(path.read_bytes(), 0.0)
    return [count for _, _, count in _slots(table) if count]


def _slots(table: QuotaTable):
    from fastgw.quotas import SLOT

    return SLOT.iter_unpack(table.memory)


def test_counts_survive_a_restart_a_reload_and_a_worker_crash(upstream, tmp_path):
    config = quota_config(upstream.url)
    gw = Gateway(tmp_path, config).start()
    try:
        assert spend(gw.port, 2) == [(200, "4"), (200, "3")]
        same = copy.deepcopy(config)
        same["server"]["limits"] = {"max_body_bytes": "5MiB"}
        gw.write_config(same)
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"config version 2 \(\w+\) live", count=2)
        assert spend(gw.port, 1) == [(200, "2")]
        for pid in gw.worker_pids():
            os.kill(pid, signal.SIGKILL)
        gw.wait_log("exited unexpectedly", count=2)
        gw.wait_log("serving config version 2", count=2)
        assert spend(gw.port, 1) == [(200, "1")]
    finally:
        assert gw.stop() == 0
    assert saved_counts(tmp_path) == [4]  # written at the clean stop
    again = Gateway(tmp_path, config).start()
    try:
        assert "1 count(s) restored" in again.log()
        assert spend(again.port, 2) == [(200, "0"), (429, "0")]
    finally:
        again.stop()


def test_a_hard_kill_loses_at_most_the_last_second(upstream, tmp_path):
    config = quota_config(upstream.url)
    gw = Gateway(tmp_path, config).start()
    pids = []
    try:
        assert spend(gw.port, 3) == [(200, "4"), (200, "3"), (200, "2")]
        wait_for(lambda: saved_counts(tmp_path) == [3], timeout=3, what="counts flushed")
        pids = [gw.proc.pid, *gw.worker_pids()]
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        gw.stop()
    again = Gateway(tmp_path, config).start()
    try:
        assert spend(again.port, 1) == [(200, "1")]
    finally:
        again.stop()


def test_a_corrupt_state_file_is_a_log_line_and_a_fresh_start(upstream, tmp_path):
    (tmp_path / "fastgw-state").mkdir()
    (tmp_path / "fastgw-state" / "quotas.state").write_bytes(b"not a state file at all")
    gw = Gateway(tmp_path, quota_config(upstream.url)).start()
    try:
        assert "is corrupt (too short)" in gw.log() or "is corrupt (not a fastgw" in gw.log()
        assert spend(gw.port, 1) == [(200, "4")]
    finally:
        gw.stop()
    assert saved_counts(tmp_path) == [1]  # replaced by a good one


def test_plan_switching_by_reload_keeps_what_was_spent(upstream, tmp_path):
    config = base_config(upstream.url)
    config["plans"] = {
        "free": {"quota": {"limit": 2, "per": "month"}},
        "gold": {"quota": {"limit": 5, "per": "month"}},
    }
    config["consumers"] = [{"name": "alice", "plan": "free", "key_auth": {"keys": ["a-key"]}}]
    config["plugins"] = {"key-auth": {}, "quota": {"limit": 1, "per": "day", "per_plan": True}}
    gw = Gateway(tmp_path, config).start()
    try:

        def ask_alice() -> tuple[int, str | None]:
            response = request(gw.port, "GET", "/x", headers=[("apikey", "a-key")])
            return response.status, response.header("x-quota-remaining")

        assert [ask_alice() for _ in range(3)] == [(200, "1"), (200, "0"), (429, "0")]
        gold = copy.deepcopy(config)
        gold["consumers"][0]["plan"] = "gold"
        gw.write_config(gold)
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"config version 2 \(\w+\) live")
        assert [ask_alice() for _ in range(4)] == [(200, "2"), (200, "1"), (200, "0"), (429, "0")]
    finally:
        gw.stop()


def test_a_quota_in_redis_is_shared_and_outlives_the_gateways(upstream, redis_server, tmp_path):
    config = quota_config(upstream.url, limit=4, workers=1, backend="redis")
    config["redis"] = {"url": redis_server.url}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = Gateway(tmp_path / "one", config).start()
    other = copy.deepcopy(config)
    other["server"] = base_config(upstream.url)["server"]  # its own ports
    two = Gateway(tmp_path / "two", other).start()
    try:
        assert spend(one.port, 2) == [(200, "3"), (200, "2")]
        assert spend(two.port, 1) == [(200, "1")]
    finally:
        one.stop()
        two.stop()
    again = Gateway(tmp_path / "one", config).start()
    try:
        assert spend(again.port, 2) == [(200, "0"), (429, "0")]
        with redis_server.client() as client:
            keys = client.keys("fgw:q:*")
            assert len(keys) == 1 and client.ttl(keys[0]) > 0  # expires after its month
    finally:
        again.stop()


def test_the_readme_limits_example_does_what_the_readme_says(tmp_path):
    with demo(tmp_path, "limits.yaml") as port:
        bob = [
            request(port, "GET", "/api/x", headers=[("apikey", "bob-secret-key")]) for _ in range(3)
        ]
        assert [r.status for r in bob][:2] == [200, 200] and bob[2].status == 429
        assert bob[2].header("retry-after") == "1"
        assert [r.header("x-quota-remaining") for r in bob[:2]] == ["99", "98"]
        carol = request(port, "GET", "/api/x", headers=[("apikey", "carol-secret-key")])
        assert carol.status == 200 and carol.header("x-quota-limit") == "20"
        times = []
        for _ in range(4):
            started = time.monotonic()
            assert request(port, "GET", "/public/x").status == 200
            times.append(time.monotonic() - started)
        assert max(times[:3]) < 0.5 and times[3] > 0.5  # the fourth waited for its slot
    assert (tmp_path / "fastgw-state" / "quotas.state").exists()  # written at the stop


def test_limit_and_quota_fields_on_a_gateway_error_response():
    settings = inproc.config(targets=("10.0.0.1",))
    settings["routes"][0]["plugins"] = {
        "rate-limit": {"limits": [{"rate": 10, "per": "1m"}], "key": "ip"},
        "quota": {"limit": 100, "per": "day", "key": "ip"},
    }
    gw = inproc.Gateway(settings)
    conn, _ = gw.pooled()
    client, ct = gw.client()
    client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.data_received(b"this is not HTTP\r\n\r\n")  # the upstream fails: the gateway's 502
    status, headers, _ = inproc.parse_response(ct.take())
    assert status == 502
    assert headers["ratelimit-remaining"] == "9" and headers["x-ratelimit-limit"] == "10"
    assert headers["x-quota-remaining"] == "99" and headers["x-quota-limit"] == "100"
