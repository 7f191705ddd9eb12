"""systemd's notify protocol, received on a real NOTIFY_SOCKET (a datagram socket the test
binds): READY=1 once every worker serves, RELOADING=1 then READY=1 around a reload (also a
failed one), STOPPING=1 at the end, STATUS lines, and WATCHDOG=1 pings that stop while a
worker is frozen (SIGSTOP) and resume when it runs again."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from .support import Gateway, base_config, request, wait_for


class NotifySocket:
    """What systemd listens on: every datagram, with the time it came."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.running = True
        self.thread = threading.Thread(target=self.receive, daemon=True)
        self.thread.start()

    def receive(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def states(self) -> list[str]:
        """The state changes in order (READY, RELOADING, STOPPING), pings left out."""
        names = ("READY", "RELOADING", "STOPPING")
        return [name for _, m in self.messages for name in names if m.get(name) == "1"]

    def pings(self, since: float = 0.0) -> int:
        return sum(1 for at, m in self.messages if at >= since and m.get("WATCHDOG") == "1")

    def last_ping_at(self) -> float:
        return max(at for at, m in self.messages if m.get("WATCHDOG") == "1")

    def last(self, state: str) -> dict[str, str]:
        return [m for _, m in self.messages if m.get(state) == "1"][-1]

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    found = NotifySocket(tmp_path / "notify.sock")
    yield found
    found.close()


def test_ready_reload_stopping_and_status(upstream, tmp_path, notify):
    config = base_config(upstream.url, workers=2)
    gw = Gateway(tmp_path, config)
    gw.start(wait=False, env={"NOTIFY_SOCKET": notify.path})
    try:
        wait_for(lambda: notify.states() == ["READY"], what="READY=1", timeout=15)
        # READY means serving: the listener and both workers answer at once.
        assert request(gw.port, "GET", "/echo").status == 200
        assert len(gw.wait_log("serving config version", count=2).split("serving config")) == 3
        ready = notify.last("READY")
        assert ready["MAINPID"] == str(gw.proc.pid)
        assert ready["STATUS"].startswith("config version 1 (") and "2 worker(s)" in ready["STATUS"]
        # A reload: RELOADING=1 with the monotonic clock, then READY=1 once both serve it.
        config["routes"][0]["name"] = "renamed"
        gw.write_config(config)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        gw.signal(signal.SIGHUP)
        wait_for(lambda: notify.states() == ["READY", "RELOADING", "READY"], what="reloaded")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert before <= int(notify.last("RELOADING")["MONOTONIC_USEC"]) <= after
        assert notify.last("READY")["STATUS"].startswith("config version 2 (")
        assert gw.log().count("config version 2") >= 2  # both workers said so
        # A failed reload: RELOADING=1, then READY=1 again on the old config.
        gw.config_path.write_text("routes: [")
        gw.signal(signal.SIGHUP)
        wait_for(lambda: len(notify.states()) == 5, what="the failed reload's READY")
        assert notify.states()[3:] == ["RELOADING", "READY"]
        assert "the reload failed" in notify.last("READY")["STATUS"]
        assert "config version 2" in notify.last("READY")["STATUS"]
        gw.signal(signal.SIGTERM)
        assert gw.proc.wait(15) == 0
        wait_for(lambda: notify.states()[-1] == "STOPPING", what="STOPPING=1")
        assert notify.pings() == 0  # no WATCHDOG_USEC, no pings
    finally:
        gw.stop()


def test_watchdog_pings_stop_while_a_worker_is_frozen(upstream, tmp_path, notify):
    gw = Gateway(tmp_path, base_config(upstream.url, workers=2))
    gw.start(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        wait_for(lambda: notify.pings() >= 3, what="watchdog pings", timeout=10)
        start = time.monotonic()
        wait_for(lambda: notify.pings(start) >= 2, what="pings every 0.5 s", timeout=3)
        frozen = gw.worker_pids()[0]
        os.kill(frozen, signal.SIGSTOP)
        try:
            # Pings come every 0.5 s; once the frozen worker's heartbeat is stale (2 s), none.
            wait_for(
                lambda: time.monotonic() - notify.last_ping_at() > 2.0,
                what="the pings to stop",
                timeout=8,
            )
        finally:
            os.kill(frozen, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: notify.pings(resumed) >= 2, what="pings again", timeout=5)
    finally:
        gw.stop()
