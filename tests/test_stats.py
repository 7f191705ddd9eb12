"""Live analytics: `GET /stats` (the last 1 and 5 minutes per route and per target, merged
over workers) on a fake clock in-process and end to end, and the dashboard page (`GET /`) in
a real headless Chromium: it loads with no console error, and its charts show the traffic.

Set FASTGW_SCREENSHOT=docs/dashboard.png to save the dashboard's screenshot for the README."""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from fastgw.observe.stats import EVERY, quantile

from .inproc import Gateway, config, parse_response, response
from .support import Gateway as RealGateway
from .support import base_config, free_port, request, wait_for

GET = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"


def observed() -> Gateway:
    settings = config(targets=("10.0.0.1",))
    settings["server"]["admin"] = "127.0.0.1:9901"  # metrics and stats on (never bound here)
    return Gateway(settings)


def send(gw: Gateway, conn, status: int = 200, latency: float = 0.003) -> None:
    client, ct = gw.client()
    client.data_received(GET)
    gw.loop.advance(latency)
    conn.data_received(response(status))
    assert parse_response(ct.take())[0] == status


def test_windows_rates_error_rates_and_percentiles_on_a_fake_clock():
    gw = observed()
    stats = gw.services.stats
    conn, _ = gw.pooled()
    # Four minutes at 2 requests/s, then one minute at 4/s with one 503 in 20.
    for _ in range(48):
        for _ in range(10):
            send(gw, conn)
        gw.loop.advance(EVERY - 10 * 0.003)
    for _ in range(12):
        for i in range(20):
            send(gw, conn, 503 if i == 0 else 200)
        gw.loop.advance(EVERY - 20 * 0.003)
    body = stats.report((7, "abc123"), 42.0)
    route = body["routes"]["all"]
    assert route["1m"]["requests"] == 240 and route["1m"]["seconds"] == pytest.approx(60, abs=0.1)
    assert route["1m"]["rps"] == pytest.approx(4.0, rel=0.01)
    assert route["1m"]["error_rate"] == 0.05
    assert route["5m"]["requests"] == 720 and route["5m"]["rps"] == pytest.approx(2.4, rel=0.01)
    assert route["5m"]["error_rate"] == pytest.approx(12 / 720, abs=1e-4)
    # Every request took 3 ms: inside the (2.5 ms, 5 ms] bucket, interpolated.
    assert (route["1m"]["p50_ms"], route["1m"]["p99_ms"]) == (3.75, 4.975)
    series = route["series"]
    assert len(series["time"]) == 60 and series["rps"][0] == 2.0 and series["rps"][-1] == 4.0
    assert series["error_rate"][-1] == 0.05 and series["p99_ms"][-1] == 4.975
    assert series["time"] == sorted(series["time"])
    (target,) = body["targets"]
    assert (target["upstream"], target["target"], target["healthy"]) == ("up", "10.0.0.1:80", True)
    assert target["1m"]["requests"] == 240 and target["1m"]["error_rate"] == 0.05
    assert (body["config_version"], body["config_digest"], body["uptime_seconds"]) == (
        7,
        "abc123",
        42.0,
    )
    # No traffic for a minute: the 1-minute window is empty, the 5-minute one is not.
    gw.loop.advance(61)
    quiet = stats.report((7, "abc123"), 103.0)["routes"]["all"]
    assert quiet["1m"]["requests"] == 0 and quiet["1m"]["p99_ms"] is None
    assert quiet["1m"]["error_rate"] is None and quiet["5m"]["requests"] > 0


def test_quantiles_interpolate_inside_buckets_like_prometheus():
    buckets = [0] * 15
    buckets[4] = 10  # ten samples in (5 ms, 10 ms]
    assert quantile(0.5, buckets, 10) == 7.5
    assert quantile(0.0, buckets, 10) == 5.0
    buckets[14] = 10  # ten more above the largest bound: reported as that bound
    assert quantile(0.99, buckets, 20) == 10000.0
    assert quantile(0.5, [0] * 15, 0) is None


def test_stats_are_merged_over_workers_end_to_end(two, tmp_path):
    config_ = base_config(two[0].url, workers=2)
    config_["upstreams"]["up"]["targets"].append({"url": "http://127.0.0.1:9"})  # refused
    config_["upstreams"]["up"]["health_check"] = {"passive": {"max_failures": 1}}
    gw = RealGateway(tmp_path, config_).start()
    try:
        statuses = [request(gw.port, "GET", "/echo").status for _ in range(40)]
        assert statuses.count(200) >= 39
        bodies = [request(gw.admin_port, "GET", "/stats").json() for _ in range(8)]
        for body in bodies:  # new connections: both workers answer, with the same sums
            window = body["routes"]["all"]["1m"]
            assert window["requests"] == 40 and body["workers"] == 2
            assert window["p50_ms"] > 0 and window["p99_ms"] >= window["p50_ms"]
            targets = {t["target"]: t for t in body["targets"]}
            assert targets["127.0.0.1:9"]["healthy"] is False
            assert targets["127.0.0.1:9"]["1m"]["error_rate"] == 1.0
            assert targets[two[0].url[7:]]["healthy"] is True
            assert body["config_version"] == 1 and body["uptime_seconds"] >= 0
    finally:
        gw.stop()


def test_the_admin_token_guards_stats_and_the_page_which_a_browser_may_open(upstream, tmp_path):
    token = "dashboard-token-0123456789"
    config_ = base_config(upstream.url)
    config_["server"]["admin"] = {"address": f"127.0.0.1:{free_port()}", "token": token}
    gw = RealGateway(tmp_path, config_).start()
    try:
        page = request(gw.admin_port, "GET", "/")
        assert page.status == 401 and page.header("www-authenticate") == 'Basic realm="fastgw"'
        assert request(gw.admin_port, "GET", "/stats").status == 401
        basic = "Basic " + base64.b64encode(f"admin:{token}".encode()).decode()
        page = request(gw.admin_port, "GET", "/", headers=[("Authorization", basic)])
        assert page.status == 200 and page.header("content-type").startswith("text/html")
        assert b"<title>fastgw</title>" in page.body
        # Nothing from elsewhere: the only URL in the page is the SVG namespace.
        assert page.body.count(b"://") == page.body.count(b"http://www.w3.org/2000/svg") == 1
        bearer = [("Authorization", f"Bearer {token}")]
        assert request(gw.admin_port, "GET", "/stats", headers=bearer).status == 200
        wrong = "Basic " + base64.b64encode(b"admin:not-the-token-0123456").decode()
        assert (
            request(gw.admin_port, "GET", "/stats", headers=[("Authorization", wrong)]).status
            == 401
        )
        assert (
            request(gw.admin_port, "GET", "/stats", headers=[("Authorization", "Basic %%%")]).status
            == 401
        )
    finally:
        gw.stop()


@pytest.fixture
def chromium():
    """Headless Chromium driven by Selenium through Debian's chromedriver (CI installs both:
    apt-get install chromium chromium-driver; never skipped under CI=true)."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "chromium or chromedriver missing (apt-get install chromium chromium-driver)"
            )
        pytest.skip("chromium and chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def test_the_dashboard_shows_live_traffic_in_a_real_browser(two, tmp_path, chromium):
    config_ = base_config(two[0].url, workers=2)
    config_["upstreams"]["billing"] = {
        "targets": [{"url": two[1].url}, {"url": "http://127.0.0.1:9"}],  # one refuses
        "health_check": {"passive": {"max_failures": 1}},
    }
    config_["routes"] = [
        {"name": "orders", "match": {"paths": ["/echo/*"]}, "upstream": "up"},
        {"name": "errors", "match": {"paths": ["/status/*"]}, "upstream": "up"},
        {"name": "billing", "match": {"paths": ["/billing/*"]}, "upstream": "billing"},
    ]
    gw = RealGateway(tmp_path, config_).start()
    stop = threading.Event()

    def traffic() -> None:
        paths = ["/echo/a"] * 8 + ["/status/503", "/billing/x"]
        while not stop.is_set():
            for path in paths:
                request(gw.port, "GET", path)
            time.sleep(0.05)  # a steady trickle, not a load test

    wanted = os.environ.get("FASTGW_SCREENSHOT")
    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        chromium.get(f"http://127.0.0.1:{gw.admin_port}/")

        def charted() -> bool:
            points = chromium.execute_script(
                "return document.getElementById('chart-rps').getAttribute('data-points')"
            )
            # Three routes, two points each: lines drawn (more for the README's picture).
            return int(points) >= (6 if wanted is None else 30)

        wait_for(charted, timeout=90, what="the charts to show the traffic")
        rows = chromium.execute_script(
            "return [...document.querySelectorAll('#routes tbody tr')].map("
            "r => [...r.children].map(c => c.textContent))"
        )
        by_route = {row[0]: row for row in rows}
        assert set(by_route) == {"orders", "errors", "billing"}
        assert float(by_route["orders"][1]) > 0  # requests/s over the last minute
        assert by_route["errors"][3] == "100.00%"
        health = chromium.execute_script(
            "return [...document.querySelectorAll('#targets tbody tr')].map("
            "r => [r.children[0].textContent, r.children[2].textContent])"
        )
        assert ["127.0.0.1:9", "down"] in health
        assert [two[0].url[7:], "healthy"] in health and [two[1].url[7:], "healthy"] in health
        assert "v1" in chromium.find_element("id", "version").text
        fetched = chromium.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert fetched and all(
            url.startswith(f"http://127.0.0.1:{gw.admin_port}/") for url in fetched
        )
        errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        shot = tmp_path / "dashboard.png"
        chromium.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if wanted is not None:
            shutil.copy(shot, Path(wanted))
    finally:
        stop.set()
        sender.join(10)
        gw.stop()
