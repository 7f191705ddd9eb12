"""The access log: fields, sampling and always-logged requests in-process on a fake clock
(the lines go through the real appender thread to a real file); end to end, two workers
appending to one file, logrotate's move and SIGUSR1, an unwritable file, and the gateway's own
log as JSON."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import orjson

from . import inproc
from .inproc import Gateway, parse_response, response
from .support import ROOT, base_config, in_parallel, request, wait_for
from .support import Gateway as RealGateway
from .test_rate_limit import errors_of

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def logged_gateway(tmp_path, **access) -> tuple[Gateway, object]:
    settings = inproc.config(targets=("10.0.0.1",))
    settings["server"]["access_log"] = {"path": str(tmp_path / "access.log"), **access}
    return Gateway(settings), tmp_path / "access.log"


def lines(gw: Gateway, path, count: int) -> list[dict]:
    """The log's entries once `count` are written (the appender's timer runs on the fake
    clock, its thread for real)."""
    gw.loop.advance(0.1)
    wait_for(
        lambda: path.exists() and path.read_bytes().count(b"\n") >= count,
        timeout=5,
        what=f"{count} access log lines",
    )
    return [json.loads(line) for line in path.read_text().splitlines()]


def proxied(gw: Gateway, request: bytes, status: int = 200, body: bytes = b"hello") -> bytes:
    conn, _ = gw.pooled()
    client, ct = gw.client()
    client.data_received(request)
    gw.loop.advance(0.25)
    conn.data_received(response(status, body))
    return ct.take()


def test_a_proxied_request_has_every_field_and_none_empty(tmp_path):
    gw, path = logged_gateway(tmp_path)
    request = (
        b"POST /orders?id=7 HTTP/1.1\r\nHost: a.test\r\nUser-Agent: curl/8.5\r\n"
        b"X-Request-ID: rid-1\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert parse_response(proxied(gw, request, body=b"created!"))[0] == 200
    (entry,) = lines(gw, path, 1)
    assert TIME.fullmatch(entry.pop("time"))
    assert entry == {
        "request_id": "rid-1",
        "client": "127.0.0.1",
        "method": "POST",
        "path": "/orders",
        "status": 200,
        "route": "all",
        "upstream": "up",
        "target": "10.0.0.1:80",
        "bytes_in": 3,
        "bytes_out": 8,
        "duration_ms": 250.0,
        "upstream_ms": 250.0,
        "attempts": 1,
        "user_agent": "curl/8.5",
    }


def test_values_from_the_request_are_escaped_into_valid_json(tmp_path):
    gw, path = logged_gateway(tmp_path)
    request = (
        b"GET /caf%C3%A9 HTTP/1.1\r\nHost: a.test\r\n"
        b'User-Agent: say "hi" \\o/\tx \xc3\xa9\r\nX-Request-ID: id"1\r\n\r\n'
    )
    assert parse_response(proxied(gw, request))[0] == 200
    (entry,) = lines(gw, path, 1)  # json.loads: one valid object per line
    assert entry["path"] == "/caf%C3%A9"
    assert entry["user_agent"] == 'say "hi" \\o/\tx ' + b"\xc3\xa9".decode("latin-1")
    assert entry["request_id"] == 'id"1'


def test_the_query_when_asked_and_the_gateways_own_answers(tmp_path):
    settings = inproc.config(targets=("10.0.0.1",))
    settings["server"]["access_log"] = {"path": str(tmp_path / "access.log"), "log_query": True}
    settings["routes"][0]["match"]["paths"] = ["/a", "/only"]
    gw, path = Gateway(settings), tmp_path / "access.log"
    proxied(gw, b"GET /a?x=1&y=2 HTTP/1.1\r\nHost: a\r\n\r\n")
    client, _ = gw.client()
    client.data_received(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
    client, _ = gw.client()
    client.data_received(b"GET /only HTTP/1.1\r\nHost: a\r\n\r\n")
    client.connection_lost(None)  # gone before the answer
    first, not_found, gone = lines(gw, path, 3)
    assert first["path"] == "/a?x=1&y=2"
    assert not_found["status"] == 404 and "route" not in not_found and "upstream" not in not_found
    assert not_found["bytes_out"] > 0
    assert gone["status"] == 499 and gone["route"] == "all" and gone["attempts"] == 1


def test_sampling_keeps_errors_429s_and_slow_requests(tmp_path):
    gw, path = logged_gateway(tmp_path, sample=0.0, slow_ms=1000)
    proxied(gw, b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")  # sampled out
    proxied(gw, b"GET /error HTTP/1.1\r\nHost: a\r\n\r\n", status=502)
    proxied(gw, b"GET /limited HTTP/1.1\r\nHost: a\r\n\r\n", status=429)
    conn, _ = gw.pooled()
    client, _ = gw.client()
    client.data_received(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    gw.loop.advance(1.5)
    conn.data_received(response())
    proxied(gw, b"GET /fast-again HTTP/1.1\r\nHost: a\r\n\r\n")  # sampled out
    paths = [entry["path"] for entry in lines(gw, path, 3)]
    assert paths == ["/error", "/limited", "/slow"]


def test_bad_access_log_settings_are_errors_with_their_paths():
    errors = errors_of(
        {},
        server={"access_log": {"path": "", "format": "xml", "sample": 2, "slow_ms": -1, "x": 1}},
    )
    for expected in (
        "server.access_log.path: expected a file name or \"stdout\", got ''",
        "server.access_log.format: expected one of json, got 'xml'",
        "server.access_log.sample: expected a number >= 0 and <= 1, got 2",
        "server.access_log.slow_ms: expected a number >= 0, got -1",
        "server.access_log.x: unknown key",
    ):
        assert any(line.startswith(expected) for line in errors), (expected, errors)
    assert errors_of({}, server={"access_log": 3}) == [
        "server.access_log: expected a mapping, got 3"
    ]


# -- end to end ------------------------------------------------------------------------------


def test_two_workers_one_file_whole_lines_and_logrotate(upstream, tmp_path):
    log = tmp_path / "access.log"
    config = base_config(upstream.url, workers=2, access_log=str(log))
    gw = RealGateway(tmp_path, config).start()
    try:
        statuses = in_parallel(
            lambda: [request(gw.port, "GET", f"/echo/{i}").status for i in range(50)], 4
        )
        assert [s for batch in statuses for s in batch] == [200] * 200
        wait_for(lambda: log.exists() and log.read_bytes().count(b"\n") >= 200, what="200 lines")
        entries = [orjson.loads(line) for line in log.read_bytes().splitlines()]
        assert len(entries) == 200 and {e["status"] for e in entries} == {200}
        assert len({e["request_id"] for e in entries}) == 200
        # logrotate: move the file, SIGUSR1 to the master; new lines go to a new file.
        log.rename(tmp_path / "access.log.1")
        gw.signal(signal.SIGUSR1)
        gw.wait_log("SIGUSR1: reopening the access logs")

        def reopened() -> bool:
            request(gw.port, "GET", "/echo/after")
            return log.exists()

        wait_for(reopened, what="a new access.log")
        wait_for(lambda: b"/echo/after" in log.read_bytes(), what="lines in the new file")
        old = (tmp_path / "access.log.1").read_bytes()
        assert old.count(b"\n") >= 200 and old.endswith(b"\n")
    finally:
        assert gw.stop() == 0


def test_an_unwritable_access_log_costs_lines_not_requests(upstream, tmp_path):
    config = base_config(upstream.url, access_log=str(tmp_path / "missing-dir" / "access.log"))
    gw = RealGateway(tmp_path, config).start()
    try:
        assert all(request(gw.port, "GET", "/echo").status == 200 for _ in range(20))
        gw.wait_log(r"access log .*missing-dir/access.log: cannot open: .*; lines dropped")
        assert gw.log().count("cannot open") == 1  # once, not per request
    finally:
        gw.stop()


def test_the_gateways_own_log_as_json(upstream, tmp_path):
    config = base_config(upstream.url)
    path = tmp_path / "fastgw.yaml"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "fastgw", "--log-format", "json", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 0
    gw = RealGateway(tmp_path, config).start(options=["--log-format", "json"])
    try:
        for line in gw.log().splitlines():
            entry = json.loads(line)
            assert {"time", "level", "pid", "logger", "message"} <= set(entry)
    finally:
        gw.stop()
