import pytest

from .support import Gateway, Upstream, base_config


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


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    """One gateway (workers: 1) in front of the test upstream, shared by a test module."""
    config = base_config(upstream.url)
    config["upstreams"]["up"]["timeouts"] = {"read": "3s", "connect": "1s"}
    config["server"]["limits"] = {"max_body_bytes": "2GiB"}
    gw = Gateway(tmp_path_factory.mktemp("gw"), config).start()
    yield gw
    gw.stop()
