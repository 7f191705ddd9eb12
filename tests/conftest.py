import os
import shutil

import pytest

from fastgw.upstream import host as host_module

from .support import Gateway, RedisServer, Upstream, base_config


@pytest.fixture(scope="session")
def upstream():
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture
def own_upstream():
    """An upstream for one test, for tests that count its connections."""
    server = Upstream()
    yield server
    server.stop()


def processes(count: int):
    servers = [Upstream() for _ in range(count)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def two():
    """Two upstream processes of one test (it may stop, kill or slow them)."""
    yield from processes(2)


@pytest.fixture
def three():
    """Three upstream processes of one test."""
    yield from processes(3)


@pytest.fixture
def ended(monkeypatch):
    """Every call of the completion point: (host address, outcome, connect, head, total)."""
    calls = []
    real = host_module.Host.attempt_ended

    def spy(self, outcome, connect, head, total, now, conn=None, reusable=False):
        calls.append((self.address, outcome, connect, head, total))
        real(self, outcome, connect, head, total, now, conn, reusable)

    monkeypatch.setattr(host_module.Host, "attempt_ended", spy)
    return calls


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    """One gateway (workers: 1) in front of the test upstream, shared by a test module."""
    config = base_config(upstream.url)
    config["upstreams"]["up"]["timeouts"] = {"read": "3s", "connect": "1s"}
    config["server"]["limits"] = {"max_body_bytes": "2GiB"}
    gw = Gateway(tmp_path_factory.mktemp("gw"), config).start()
    yield gw
    gw.stop()


@pytest.fixture
def redis_installed():
    """redis-server is there (installed by .ci/run; never skipped under CI=true)."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is not installed (CI installs it: apt-get install redis-server)"
            )
        pytest.skip("redis-server not installed")


@pytest.fixture
def redis_server(redis_installed):
    """A real redis-server for one test, on a free port, stopped by its pid."""
    server = RedisServer().start()
    yield server
    server.stop()
