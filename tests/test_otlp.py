"""Span export over OTLP/HTTP (protobuf) to a real receiver on loopback: a server span per
sampled request and a client span per attempt (retries visible), the upstream's parent being
its attempt's span; batched on the loop's timer, sent by a thread; a collector that is down or
stuck costs spans (counted), never a request. In-process on a fake clock, and end to end."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time

import pytest

from fastgw.observe import otlp

from .inproc import Gateway, config, parse_response, response
from .servers.collector import Collector
from .support import Gateway as RealGateway
from .support import base_config, request, wait_for
from .test_metrics import scrape, value
from .test_rate_limit import errors_of
from .test_tracing import FORWARDED, PARENT, TRACE, VALID

GET = b"GET /x/y?q=1 HTTP/1.1\r\nHost: api.test:8080\r\nUser-Agent: probe/1\r\n"


@pytest.fixture
def collector():
    found = Collector()
    yield found
    found.stop()


def exporting(
    endpoint: str, sample_ratio: float = 1.0, targets=("10.0.0.1",), **upstream
) -> Gateway:
    settings = config(targets=targets, **upstream)
    settings["tracing"] = {
        "otlp_endpoint": endpoint,
        "sample_ratio": sample_ratio,
        "service_name": "edge",
    }
    return Gateway(settings)


def exporter_of(gw: Gateway) -> otlp.OtlpExporter:
    return gw.site.runtime.tracing.exporter


def test_a_retried_request_exports_a_server_span_and_one_client_span_per_attempt(collector):
    gw = exporting(collector.url, targets=("10.0.0.1", "10.0.0.2"), retry_on=[503])
    a, at = gw.pooled("10.0.0.1")
    b, bt = gw.pooled("10.0.0.2")
    client, ct = gw.client()
    client.data_received(GET + f"traceparent: {VALID}\r\n\r\n".encode())
    gw.loop.advance(0.002)
    a.data_received(response(503, b"busy"))
    gw.loop.advance(0.003)
    b.data_received(response(200, b"fine"))
    assert parse_response(ct.take())[0] == 200
    first, second = FORWARDED.findall(at.take())[0], FORWARDED.findall(bt.take())[0]
    assert not collector.taken()  # batched: nothing goes before the timer
    gw.loop.advance(otlp.FLUSH)
    wait_for(lambda: len(collector.taken()) == 3, what="three spans at the collector")
    server, *attempts = collector.taken()
    assert (server["trace_id"], server["parent_id"], server["kind"]) == (TRACE, PARENT, 2)
    assert server["name"] == "GET all" and not server["error"]
    assert server["attributes"] == {
        "http.request.method": "GET",
        "url.path": "/x/y",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "client.address": "127.0.0.1",
        "fastgw.route": "all",
        "fastgw.request_id": server["attributes"]["fastgw.request_id"],
        "server.address": "api.test",
        "http.response.status_code": 200,
        "user_agent.original": "probe/1",
    }
    # Each attempt is a client span, child of the server span, and the parent its upstream saw.
    assert [s["span_id"] for s in attempts] == [first[1].decode(), second[1].decode()]
    assert all(s["parent_id"] == server["span_id"] and s["kind"] == 3 for s in attempts)
    assert all(s["trace_id"] == TRACE and s["name"] == "GET" for s in attempts)
    assert attempts[0]["error"] and attempts[0]["attributes"]["error.type"] == "503"
    assert attempts[0]["attributes"]["http.response.status_code"] == 503
    assert attempts[0]["attributes"]["url.full"] == "http://10.0.0.1:80/x/y"
    assert attempts[1]["attributes"]["http.request.resend_count"] == 1
    assert attempts[1]["attributes"]["server.address"] == "10.0.0.2"
    assert not attempts[1]["error"] and "http.request.resend_count" not in attempts[0]["attributes"]
    # Times: the attempts inside the server span, in order, on the wall clock.
    assert server["start"] <= attempts[0]["start"] < attempts[0]["end"] <= attempts[1]["start"]
    assert attempts[1]["end"] <= server["end"]
    assert server["end"] - server["start"] == pytest.approx(5_000_000, abs=100_000)
    assert abs(server["end"] / 1e9 - time.time()) < 60
    post = collector.posts[0]
    assert post["path"] == "/v1/traces" and post["content_type"] == "application/x-protobuf"
    assert post["resource"]["service.name"] == "edge" and post["scope"] == "fastgw"


def test_only_sampled_requests_are_exported(collector):
    gw = exporting(collector.url, sample_ratio=0.0)
    for header in (b"", f"traceparent: 00-{TRACE}-{PARENT}-00\r\n".encode()):
        conn, ut = gw.pooled()
        client, ct = gw.client()
        client.data_received(GET + header + b"\r\n")
        assert FORWARDED.findall(ut.take())[0][2] == b"00"
        conn.data_received(response())
        assert parse_response(ct.take())[0] == 200
    gw.loop.advance(otlp.FLUSH)
    assert exporter_of(gw).handed == 0  # nothing recorded, nothing handed over
    started = exporting(collector.url, sample_ratio=1.0)  # a trace the gateway starts
    conn, _ = started.pooled()
    client, _ = started.client()
    client.data_received(GET + b"\r\n")
    conn.data_received(response())
    started.loop.advance(otlp.FLUSH)
    wait_for(lambda: len(collector.taken()) == 2, what="the server and client spans")
    assert collector.taken()[0]["parent_id"] is None  # a root span


def test_connect_failures_and_client_errors_are_in_the_attempt_spans(collector):
    gw = exporting(collector.url, targets=("10.0.0.1", "10.0.0.2"))
    client, ct = gw.client()
    client.data_received(GET + b"\r\n")
    gw.dial().fail(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    gw.dial().fail(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert parse_response(ct.take())[0] == 502
    gw.loop.advance(otlp.FLUSH)
    wait_for(lambda: len(collector.taken()) == 3, what="three spans")
    server, *attempts = collector.taken()
    assert server["error"] and server["attributes"]["error.type"] == "502"
    assert [s["attributes"]["fastgw.outcome"] for s in attempts] == ["connect_error"] * 2
    assert all(s["attributes"]["error.type"] == "connect_error" for s in attempts)
    assert all("http.response.status_code" not in s["attributes"] for s in attempts)


def test_a_stuck_collector_costs_spans_counted_never_requests():
    stuck = socket.socket()  # accepts connections (the backlog) and never answers
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(16)
    try:
        gw = exporting(f"http://127.0.0.1:{stuck.getsockname()[1]}/v1/traces")
        exporter = exporter_of(gw)
        answered = 0
        conn, _ = gw.pooled()  # back in the pool after each response
        for _ in range(1500):  # two spans each: 3,000 spans, the queue holds 2,048
            client, ct = gw.client()
            client.data_received(GET + b"\r\n")
            conn.data_received(response())
            answered += parse_response(ct.take())[0] == 200
        assert answered == 1500
        assert exporter.dropped_here == 3000 - otlp.MAX_QUEUE
        assert exporter.handed + exporter.size == otlp.MAX_QUEUE
    finally:
        stuck.close()  # the export thread's connection fails at once from here on
    wait_for(lambda: exporter.done == exporter.handed, timeout=30, what="the queue drained")
    gw.loop.advance(otlp.FLUSH)
    wait_for(lambda: exporter.done == otlp.MAX_QUEUE, timeout=30, what="every span handled")
    assert exporter.exported == 0 and exporter.dropped == 3000


def test_bad_tracing_export_settings_are_errors_with_their_paths():
    errors = errors_of({}, tracing={"otlp_endpoint": "udp://x", "service_name": ""})
    assert any(
        e.startswith("tracing.otlp_endpoint: expected the collector's OTLP/HTTP") for e in errors
    )
    assert any(e.startswith("tracing.service_name: expected a service name") for e in errors)


def test_without_the_otel_extra_an_endpoint_is_a_load_error_naming_it(tmp_path):
    path = tmp_path / "fastgw.yaml"
    settings = config()
    settings["tracing"] = {"otlp_endpoint": "http://127.0.0.1:4318/v1/traces"}
    path.write_text(json.dumps(settings))
    blocked = (
        "import sys; sys.modules['opentelemetry'] = None; from fastgw.cli import main; "
        f"sys.exit(main(['check', '-c', {str(path)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True)
    assert done.returncode != 0
    assert "tracing.otlp_endpoint: exporting spans needs the OpenTelemetry protocol package" in (
        done.stdout + done.stderr
    )
    assert "pip install 'fastgw[otel]'" in done.stdout + done.stderr
    del settings["tracing"]["otlp_endpoint"]  # propagation alone needs nothing
    path.write_text(json.dumps(settings))
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_spans_are_exported_and_counted_end_to_end(upstream, tmp_path, collector):
    config_ = base_config(upstream.url, workers=2)
    config_["tracing"] = {"otlp_endpoint": collector.url, "sample_ratio": 1.0}
    gw = RealGateway(tmp_path, config_).start()
    try:
        for _ in range(20):
            assert request(gw.port, "GET", "/echo").status == 200
        wait_for(lambda: len(collector.taken()) == 40, what="40 spans", timeout=10)
        servers = [s for s in collector.taken() if s["kind"] == 2]
        assert len(servers) == 20 and len({s["trace_id"] for s in servers}) == 20
        wait_for(
            lambda: value(scrape(gw), "fastgw_tracing_spans_exported_total") == 40,
            what="the exported spans counted",
        )
        collector.stop()  # the collector goes away: requests go on, spans are counted lost
        started = time.monotonic()
        for _ in range(10):
            assert request(gw.port, "GET", "/echo").status == 200
        assert time.monotonic() - started < 5
        wait_for(
            lambda: value(scrape(gw), "fastgw_tracing_spans_dropped_total") == 20,
            what="the lost spans counted",
            timeout=10,
        )
    finally:
        gw.stop()
