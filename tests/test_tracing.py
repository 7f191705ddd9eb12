"""W3C trace context: continued when valid, started when absent or invalid, forwarded with
the gateway's span id as the parent; in the response with `response_header`; in the access
log; untouched without a `tracing` section. In-process, and once end to end."""

from __future__ import annotations

import json
import re

from . import inproc
from .inproc import Gateway, parse_response, response
from .support import Gateway as RealGateway
from .support import base_config, request, wait_for
from .test_rate_limit import errors_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
FORWARDED = re.compile(rb"traceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\r\n", re.I)


def traced(**tracing) -> Gateway:
    settings = inproc.config(targets=("10.0.0.1",))
    settings["tracing"] = tracing
    return Gateway(settings)


def forward(gw: Gateway, headers: bytes = b"") -> tuple[bytes, bytes]:
    """(the head the upstream got, what the client got)."""
    conn, ut = gw.pooled()
    client, ct = gw.client()
    client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
    sent = ut.take()
    conn.data_received(response())
    return sent, ct.take()


def test_a_valid_traceparent_is_continued_with_a_new_parent():
    sent, _ = forward(
        traced(), f"traceparent: {VALID}\r\ntracestate: congo=t61rcWkgMzE\r\n".encode()
    )
    (found,) = FORWARDED.findall(sent)
    assert found[0].decode() == TRACE and found[1].decode() != PARENT and found[2] == b"01"
    assert sent.count(b"traceparent") == 1 and b"tracestate: congo=t61rcWkgMzE\r\n" in sent


def test_absent_or_invalid_starts_a_trace_and_drops_tracestate():
    for header in (
        b"",
        b"traceparent: 00-" + b"0" * 32 + b"-" + PARENT.encode() + b"-01\r\n",  # zero trace id
        b"traceparent: ff-" + TRACE.encode() + b"-" + PARENT.encode() + b"-01\r\n",  # version ff
        b"traceparent: 00-" + TRACE.encode() + b"-" + b"0" * 16 + b"-01\r\n",  # zero parent
        b"traceparent: 00-xyz-01\r\ntracestate: a=b\r\n",  # malformed
    ):
        sent, _ = forward(traced(), header)
        (found,) = FORWARDED.findall(sent)
        assert found[0].decode() != TRACE and found[0] != b"0" * 32, header
        assert sent.count(b"traceparent") == 1 and b"tracestate" not in sent, header
    sent, _ = forward(traced(sample_ratio=0.0))
    assert FORWARDED.findall(sent)[0][2] == b"00"  # not sampled


def test_response_header_and_without_tracing_untouched():
    _, answered = forward(traced(response_header=True), f"traceparent: {VALID}\r\n".encode())
    _, headers, _ = parse_response(answered)
    assert headers["traceparent"].startswith(f"00-{TRACE}-")
    plain = Gateway(inproc.config(targets=("10.0.0.1",)))
    sent, answered = forward(plain, f"traceparent: {VALID}\r\n".encode())
    assert f"traceparent: {VALID}\r\n".encode() in sent
    assert "traceparent" not in parse_response(answered)[1]


def test_bad_tracing_settings_are_errors_with_their_paths():
    errors = errors_of({}, tracing={"sample_ratio": 2, "response_header": "yes", "x": 1})
    assert "tracing.sample_ratio: expected a number >= 0 and <= 1, got 2" in errors
    assert "tracing.response_header: expected true or false, got 'yes'" in errors
    assert any(line.startswith("tracing.x: unknown key") for line in errors)


def test_the_trace_id_is_in_the_access_log_end_to_end(upstream, tmp_path):
    config = base_config(upstream.url, access_log=str(tmp_path / "access.log"))
    config["tracing"] = {"response_header": True}
    gw = RealGateway(tmp_path, config).start()
    try:
        got = request(gw.port, "GET", "/echo", headers=[("traceparent", VALID)])
        assert got.header("traceparent").startswith(f"00-{TRACE}-")
        seen = {k.lower(): v for k, v in got.json()["headers"]}
        assert seen["traceparent"].startswith(f"00-{TRACE}-")
        assert seen["traceparent"] == got.header("traceparent")
        log = tmp_path / "access.log"
        wait_for(lambda: log.exists() and log.read_text().endswith("\n"), what="the line")
        assert json.loads(log.read_text().splitlines()[0])["trace_id"] == TRACE
    finally:
        gw.stop()
