"""Zero-downtime upgrade: SIGUSR2 to the master starts a new master from the installed code
on the same sockets; once it serves, the old one drains and exits. Under steady load (a new
connection per request, from several threads): zero refused or failed connections and zero
failed requests, across one upgrade and across 20 in a row. A new master that cannot start
leaves the old one serving, and says why. Under systemd, the new master announces itself
(MAINPID, READY=1) and the old one sends no STOPPING=1."""

from __future__ import annotations

import os
import re
import signal
import threading

from .support import Gateway, base_config, request, wait_for
from .test_systemd import NotifySocket


class Load:
    """Threads sending requests, each on a new connection, until stopped; every failure kept."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.running = True
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.send, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def send(self) -> None:
        while self.running:
            try:
                status = request(self.port, "GET", "/echo", timeout=5).status
                failure = None if status == 200 else f"status {status}"
            except Exception as exc:  # refused, reset, closed early: all failures here
                failure = f"{type(exc).__name__}: {exc}"
            with self.lock:
                if failure is None:
                    self.ok += 1
                else:
                    self.failures.append(failure)

    def stop(self) -> None:
        self.running = False
        for thread in self.threads:
            thread.join(10)


def masters(gw: Gateway) -> list[int]:
    """Every new master the log has announced, in order."""
    return [int(pid) for pid in re.findall(r"new master pid (\d+) starting", gw.log())]


def upgrade(gw: Gateway, current: int) -> int:
    """SIGUSR2 to `current`; wait until its successor serves and it has exited."""
    handed = gw.log().count("stopped: the new master serves")
    os.kill(current, signal.SIGUSR2)
    wait_for(
        lambda: gw.log().count("stopped: the new master serves") > handed,
        timeout=30,
        what="the old master to hand over",
    )
    wait_for(lambda: not alive(current), what="the old master to exit")
    return masters(gw)[-1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie (not reaped yet) has exited
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_upgrades_under_load_lose_nothing(upstream, tmp_path):
    gw = Gateway(tmp_path, base_config(upstream.url, workers=2)).start()
    current = gw.proc.pid
    load = Load(gw.port)
    try:
        wait_for(lambda: load.ok >= 50, what="the load running")
        current = upgrade(gw, current)
        assert gw.proc.wait(10) == 0  # the first master exited cleanly
        before = load.ok
        wait_for(lambda: load.ok >= before + 50, what="requests after the upgrade")
        assert load.failures == []
        for _ in range(20):
            current = upgrade(gw, current)
        before = load.ok
        wait_for(lambda: load.ok >= before + 50, what="requests after 20 upgrades")
    finally:
        load.stop()
        if alive(current):
            os.kill(current, signal.SIGTERM)
            wait_for(lambda: not alive(current), what="the last master to stop", timeout=20)
        gw.stop()
    assert load.failures == []
    assert load.ok > 500
    assert len(masters(gw)) == 21


def test_a_new_master_that_cannot_start_leaves_the_old_one_serving(upstream, tmp_path):
    gw = Gateway(tmp_path, base_config(upstream.url)).start()
    try:
        gw.config_path.write_text("routes: [")  # what the new master will read
        gw.signal(signal.SIGUSR2)
        log = gw.wait_log(r"upgrade failed: the new master \(pid \d+\) it exited \(exit code 1\)")
        assert "still serving config version 1" in log
        assert request(gw.port, "GET", "/echo").status == 200
        assert gw.proc.poll() is None
    finally:
        gw.stop()


def test_under_systemd_the_new_master_takes_over_the_main_pid(upstream, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    gw = Gateway(tmp_path, base_config(upstream.url))
    gw.start(env={"NOTIFY_SOCKET": notify.path})
    current = gw.proc.pid
    try:
        wait_for(lambda: notify.states() == ["READY"], what="READY=1")
        current = upgrade(gw, current)
        wait_for(lambda: notify.states() == ["READY", "READY"], what="the new master's READY=1")
        assert notify.last("READY")["MAINPID"] == str(current)
        assert "STOPPING" not in notify.states()
    finally:
        if alive(current):
            os.kill(current, signal.SIGTERM)
            wait_for(lambda: not alive(current), what="the master to stop", timeout=20)
        gw.stop()
        notify.close()
