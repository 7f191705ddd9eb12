"""Prometheus metrics end to end: a real gateway with two workers in front of real upstreams;
`GET /metrics` answered by whichever worker the connection reaches must give the same sums,
never going back across a worker's crash and restart or a reload."""

from __future__ import annotations

import os
import signal
import time

from prometheus_client.parser import text_string_to_metric_families

from .support import Gateway, Upstream, base_config, in_parallel, request, wait_for


def scrape(gw: Gateway) -> dict[tuple[str, tuple], float]:
    """Every sample of one scrape, by (name, sorted labels)."""
    response = request(gw.admin_port, "GET", "/metrics")
    assert response.status == 200
    assert response.header("content-type").startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """The sum over the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= set(lbls))


OK_GETS = {"route": "all", "method": "GET", "status": "2xx"}


def test_sums_over_workers_whichever_answers_and_never_backwards(upstream, tmp_path):
    config = base_config(upstream.url, workers=2)
    gw = Gateway(tmp_path, config).start()
    try:
        in_parallel(lambda: [request(gw.port, "GET", "/echo") for _ in range(30)], 4)
        request(gw.port, "GET", "/status/503")
        request(gw.port, "PROPFIND", "/echo")
        for _ in range(8):  # new connections: both workers answer some scrapes
            samples = scrape(gw)
            assert value(samples, "fastgw_requests_total", **OK_GETS) == 120
            assert (
                value(samples, "fastgw_requests_total", route="all", method="GET", status="5xx")
                == 1
            )
            assert (
                value(samples, "fastgw_requests_total", route="all", method="other", status="2xx")
                == 1
            )
        assert value(samples, "fastgw_request_duration_seconds_count", route="all") == 122
        target = {"upstream": "up", "target": upstream.url[7:]}
        assert value(samples, "fastgw_upstream_requests_total", outcome="ok", **target) == 121
        assert value(samples, "fastgw_upstream_requests_total", outcome="5xx", **target) == 1
        assert (
            value(samples, "fastgw_upstream_target_healthy", upstream="up", target=upstream.url[7:])
            == 1
        )
        assert value(samples, "fastgw_bytes_sent_total", route="all") > 0
        assert total(samples, "process_resident_memory_bytes") > 0
        assert {lbls for (n, lbls) in samples if n == "process_cpu_seconds_total"} == {
            (("worker", "0"),),
            (("worker", "1"),),
        }
        # A worker killed and restarted: its counts stay.
        before = value(scrape(gw), "fastgw_requests_total", **OK_GETS)
        victim = gw.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        gw.wait_log(r"worker \d exited unexpectedly")
        wait_for(
            lambda: len(gw.worker_pids()) == 2 and victim not in gw.worker_pids(),
            what="the worker restarted",
        )
        gw.wait_log(r"serving config version 1", count=3)
        for _ in range(4):
            assert value(scrape(gw), "fastgw_requests_total", **OK_GETS) >= before
        # Reloads: one good, one bad.
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"config version 2 \(\w+\) live", count=2)
        gw.config_path.write_text("server: {workers: many}\n")
        gw.signal(signal.SIGHUP)
        gw.wait_log("reload failed")
        samples = scrape(gw)
        assert value(samples, "fastgw_config_reloads_total", result="success") == 1
        assert value(samples, "fastgw_config_reloads_total", result="failure") == 1
        assert total(samples, "fastgw_config_info", version="2") == 1
    finally:
        gw.stop()


def test_unrouted_requests_and_the_gateways_own_answers(upstream, tmp_path):
    config = base_config(upstream.url)
    config["routes"][0]["match"] = {"paths": ["/echo"]}
    config["routes"].append(
        {
            "name": "keyed",
            "match": {"paths": ["/keyed"]},
            "upstream": "up",
            "plugins": {
                "key-auth": {},
                "rate-limit": {"limits": [{"rate": 1, "per": "1m"}], "key": "consumer"},
            },
        }
    )
    config["consumers"] = [{"name": "acme", "key_auth": {"keys": ["k-123"]}}]
    gw = Gateway(tmp_path, config).start()
    try:
        assert request(gw.port, "GET", "/nowhere").status == 404
        assert request(gw.port, "GET", "/keyed").status == 401
        key = [("apikey", "k-123")]
        assert request(gw.port, "GET", "/keyed", headers=key).status == 200
        assert request(gw.port, "GET", "/keyed", headers=key).status == 429
        samples = scrape(gw)
        assert (
            value(samples, "fastgw_requests_total", route="none", method="GET", status="4xx") == 1
        )
        assert value(samples, "fastgw_auth_failures_total", route="keyed", plugin="key-auth") == 1
        assert value(samples, "fastgw_ratelimit_rejected_total", route="keyed") == 1
        assert (
            value(samples, "fastgw_requests_total", route="keyed", method="GET", status="429") == 1
        )
        assert value(samples, "fastgw_connections_active") >= 0
    finally:
        gw.stop()


def test_upstream_outcomes_health_and_retries(tmp_path):
    good, dead = Upstream(), Upstream()
    try:
        config = base_config(good.url)
        config["upstreams"]["up"] = {
            "targets": [{"url": good.url}, {"url": dead.url}],
            "retry_on": [503],
            "health_check": {
                "active": {"path": "/health", "interval": "200ms", "unhealthy": 1, "healthy": 1}
            },
        }
        dead.kill()
        gw = Gateway(tmp_path, config).start()
        try:
            for _ in range(4):
                assert request(gw.port, "GET", "/echo").status == 200
            dead_label = dead.url[7:]

            def counted() -> bool:
                samples = scrape(gw)
                return (
                    value(
                        samples, "fastgw_upstream_target_healthy", upstream="up", target=dead_label
                    )
                    == 0
                    and value(
                        samples,
                        "fastgw_upstream_requests_total",
                        upstream="up",
                        target=dead_label,
                        outcome="connect_error",
                    )
                    >= 1
                )

            wait_for(counted, what="the dead target counted and unhealthy")
            request(good.port, "GET", "/set-status?status=503")
            started = time.monotonic()
            request(gw.port, "GET", "/echo")
            assert time.monotonic() - started < 5
            samples = scrape(gw)
            assert value(samples, "fastgw_upstream_retries_total", upstream="up") >= 1
        finally:
            gw.stop()
    finally:
        good.stop()
        dead.stop()


def test_the_admin_token_guards_metrics_but_not_health(upstream, tmp_path):
    config = base_config(upstream.url)
    admin = config["server"]["admin"]
    config["server"]["admin"] = {"address": admin, "token": "s3cret-token-0123456789"}
    gw = Gateway(tmp_path, config).start()
    try:
        refused = request(gw.admin_port, "GET", "/metrics")
        assert refused.status == 401 and refused.json()["error"] == "admin token required"
        assert refused.header("www-authenticate") == 'Bearer realm="fastgw"'
        wrong = [("Authorization", "Bearer s3cret-token-0123456780")]
        assert request(gw.admin_port, "GET", "/metrics", headers=wrong).status == 401
        right = [("Authorization", "Bearer s3cret-token-0123456789")]
        assert request(gw.admin_port, "GET", "/metrics", headers=right).status == 200
        assert request(gw.admin_port, "GET", "/healthz").status == 200
        assert request(gw.admin_port, "GET", "/readyz").status == 200
        # A reload changes the token without a restart.
        config["server"]["admin"]["token"] = "another-token-0123456789"
        gw.write_config(config)
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"config version 2 \(\w+\) live")
        assert request(gw.admin_port, "GET", "/metrics", headers=right).status == 401
        again = [("Authorization", "Bearer another-token-0123456789")]
        assert request(gw.admin_port, "GET", "/metrics", headers=again).status == 200
        assert "take effect after a restart" not in gw.log()
    finally:
        gw.stop()


def test_a_short_admin_token_is_an_error_with_its_path():
    from .test_rate_limit import errors_of

    errors = errors_of({}, server={"admin": {"address": "127.0.0.1:9901", "token": "short"}})
    assert errors[0].startswith("server.admin.token: expected a token of 16 or more")


def test_consumer_label(upstream, tmp_path):
    config = base_config(upstream.url)
    config["routes"][0]["plugins"] = {"key-auth": {}}
    config["consumers"] = [
        {"name": "acme", "key_auth": {"keys": ["k-acme"]}},
        {"name": "globex", "key_auth": {"keys": ["k-globex"]}},
    ]
    config["metrics"] = {"consumer_label": True}
    gw = Gateway(tmp_path, config).start()
    try:
        for key, count in (("k-acme", 3), ("k-globex", 1)):
            for _ in range(count):
                assert request(gw.port, "GET", "/echo", headers=[("apikey", key)]).status == 200
        assert request(gw.port, "GET", "/echo").status == 401
        samples = scrape(gw)
        ok = {"route": "all", "method": "GET", "status": "2xx"}
        assert value(samples, "fastgw_requests_total", consumer="acme", **ok) == 3
        assert value(samples, "fastgw_requests_total", consumer="globex", **ok) == 1
        assert (
            value(
                samples,
                "fastgw_requests_total",
                route="all",
                method="GET",
                status="4xx",
                consumer="",
            )
            == 1
        )
    finally:
        gw.stop()


def test_the_shipped_dashboard_and_alerts_use_only_real_metrics(upstream, tmp_path):
    """Every metric named in config/grafana-dashboard.json and config/prometheus-alerts.yml
    exists in a real scrape; promtool accepts the rules."""
    import json
    import re
    import shutil
    import subprocess

    from .support import ROOT

    config = base_config(upstream.url, access_log=str(tmp_path / "access.log"))
    config["routes"][0]["plugins"] = {"key-auth": {}}
    config["consumers"] = [{"name": "acme", "key_auth": {"keys": ["k-acme"]}}]
    gw = Gateway(tmp_path, config).start()
    try:
        request(gw.port, "GET", "/echo", headers=[("apikey", "k-acme")])
        body = request(gw.admin_port, "GET", "/metrics").body.decode()
    finally:
        gw.stop()
    scraped = set()
    for family in text_string_to_metric_families(body):
        scraped.add(family.name)
        scraped.update(sample.name for sample in family.samples)
    dashboard = (ROOT / "config" / "grafana-dashboard.json").read_text()
    exprs = [
        target["expr"]
        for panel in json.loads(dashboard)["panels"]
        for target in panel.get("targets", [])
    ]
    alerts = (ROOT / "config" / "prometheus-alerts.yml").read_text()
    used = set(re.findall(r"\b(?:fastgw|process)_[a-z_]+", " ".join(exprs) + alerts))
    assert len(used) >= 12
    assert used <= scraped, sorted(used - scraped)
    if shutil.which("promtool") is None:
        assert not os.environ.get("CI"), "promtool is missing (CI installs prometheus)"
        return
    checked = subprocess.run(
        ["promtool", "check", "rules", str(ROOT / "config" / "prometheus-alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
