"""Plugins end to end: key-auth, basic-auth, acl, ip-restriction, cors, correlation-id, the
identity headers, global plugins and overrides, and a plugin loaded from `plugin_modules`."""

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastgw.plugins.passwords import hash_password

from .support import ROOT, Client, Gateway, base_config, demo, request, wait_for

ALICE_PASSWORD = "wonder land:1"


def basic(user: str, password: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def echoed(response) -> dict:
    """The request headers as the test upstream received them (names as sent)."""
    assert response.status == 200, response.body
    return {name.lower(): value for name, value in response.json()["headers"]}


@pytest.fixture(scope="module")
def secured(upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugins")
    config = base_config(upstream.url, trusted_proxies=["127.0.0.1/32"])
    config["server"]["plugin_modules"] = ["tests.example_plugin"]
    config["consumers"] = [
        {
            "name": "alice",
            "groups": ["admins", "staff"],
            "key_auth": {"keys": ["alice-key-1", "alice-key-2"]},
            "basic_auth": {"password_hash": hash_password(ALICE_PASSWORD)},
        },
        {
            "name": "bob",
            "groups": ["users"],
            "key_auth": {"key_sha256": [hashlib.sha256(b"bob-key").hexdigest()]},
        },
        {"name": "carol", "groups": ["admins", "banned"], "key_auth": {"keys": ["carol-key"]}},
    ]
    config["plugins"] = {"correlation-id": {}}
    route = lambda name, plugins: {  # noqa: E731
        "name": name,
        "match": {"paths": [f"/{name}/*"]},
        "upstream": "up",
        "plugins": plugins,
    }
    config["routes"] = [
        route("key", {"key-auth": {}}),
        route(
            "hidden",
            {"key-auth": {"header": "X-Api-Key", "query": "key", "hide_credentials": True}},
        ),
        route(
            "admin",
            {"key-auth": {}, "acl": {"allow_groups": ["admins"], "deny_groups": ["banned"]}},
        ),
        route("basic", {"basic-auth": {"realm": "test realm"}}),
        route(
            "ip",
            {"ip-restriction": {"allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.9.0.0/16"]}},
        ),
        route(
            "cors",
            {
                "cors": {
                    "origins": ["https://app.example.com", "*.trusted.org"],
                    "credentials": True,
                    "max_age": "10m",
                    "expose_headers": ["X-Total"],
                    "headers": ["Content-Type", "Authorization"],
                },
                "key-auth": {},
            },
        ),
        route("anycors", {"cors": {}}),
        route("plain", {"correlation-id": {"enabled": False}}),
        route(
            "audited",
            {
                "key-auth": {},
                "audit-log": {"path": str(tmp / "audit.log"), "block_methods": ["DELETE"]},
            },
        ),
        route("open", {}),
    ]
    gw = Gateway(tmp, config).start()
    gw.audit = tmp / "audit.log"
    yield gw
    gw.stop()


# -- key-auth ---------------------------------------------------------------------------------


def test_key_auth_maps_the_key_to_its_consumer(secured):
    headers = echoed(request(secured.port, "GET", "/key/x", headers=[("apikey", "alice-key-2")]))
    assert headers["x-consumer-name"] == "alice"
    assert headers["x-consumer-groups"] == "admins,staff"
    assert headers["apikey"] == "alice-key-2"  # hide_credentials is off by default
    assert "x-auth-subject" not in headers
    by_query = echoed(request(secured.port, "GET", "/key/x?apikey=bob-key&a=1"))
    assert by_query["x-consumer-name"] == "bob"  # configured by its SHA-256 only
    assert "x-consumer-groups" in by_query


def test_key_auth_missing_or_wrong_key_is_401_with_a_challenge(secured):
    for headers, target in (
        ([], "/key/x"),
        ([("apikey", "nope")], "/key/x"),
        ([], "/key/x?apikey="),
    ):
        response = request(secured.port, "GET", target, headers=headers)
        assert response.status == 401
        assert response.header("www-authenticate") == 'Key realm="fastgw"'
        body = response.json()
        assert body["status"] == 401 and body["request_id"] == response.header("x-request-id")
    assert "unknown API key" in secured.log()  # the precise reason is logged...
    wrong = request(secured.port, "GET", "/key/x", headers=[("apikey", "nope")]).json()
    assert "unknown" not in wrong["error"]  # ...and not told to the client


def test_key_auth_hides_credentials_from_header_and_query(secured):
    response = request(
        secured.port, "GET", "/hidden/x?a=1&key=alice-key-1&b=2", headers=[("X-Api-Key", "zzz")]
    )
    # The header comes first: `zzz` is no key, so 401, even though the query holds a good one.
    assert response.status == 401
    by_query = request(secured.port, "GET", "/hidden/x?a=1&key=alice%2Dkey%2D1&b=2")
    assert by_query.json()["target"] == "/hidden/x?a=1&b=2"
    assert echoed(by_query)["x-consumer-name"] == "alice"
    by_header = request(secured.port, "GET", "/hidden/x", headers=[("x-api-key", "carol-key")])
    headers = echoed(by_header)
    assert "x-api-key" not in headers and headers["x-consumer-name"] == "carol"


# -- identity headers cannot be spoofed -------------------------------------------------------------


SPOOFED = [
    ("X-Consumer-Name", "root"),
    ("x-consumer-groups", "admins"),
    ("X-AUTH-SUBJECT", "root"),
    ("X-Auth-Scopes", "everything"),
]


def test_spoofed_identity_headers_are_removed_everywhere(secured):
    unauthenticated = echoed(request(secured.port, "GET", "/open/x", headers=SPOOFED))
    authenticated = echoed(
        request(secured.port, "GET", "/key/x", headers=[*SPOOFED, ("apikey", "bob-key")])
    )
    for headers in (unauthenticated, authenticated):
        assert "x-auth-subject" not in headers and "x-auth-scopes" not in headers
    assert "x-consumer-name" not in unauthenticated and "x-consumer-groups" not in unauthenticated
    assert authenticated["x-consumer-name"] == "bob"
    assert authenticated["x-consumer-groups"] == "users"


# -- acl ------------------------------------------------------------------------------------------


def test_acl_allows_and_denies_by_group(secured):
    assert (
        request(secured.port, "GET", "/admin/x", headers=[("apikey", "alice-key-1")]).status == 200
    )
    outsider = request(secured.port, "GET", "/admin/x", headers=[("apikey", "bob-key")])
    assert (
        outsider.status == 403
        and outsider.json()["error"] == "access to this resource is not allowed"
    )
    assert outsider.header("www-authenticate") is None
    banned = request(secured.port, "GET", "/admin/x", headers=[("apikey", "carol-key")])
    assert banned.status == 403  # in an allowed group, but deny wins
    assert request(secured.port, "GET", "/admin/x").status == 401  # authentication comes first
    assert "is in a denied group" in secured.log()


# -- basic-auth -----------------------------------------------------------------------------------


def test_basic_auth(secured):
    ok = request(secured.port, "GET", "/basic/x", headers=[basic("alice", ALICE_PASSWORD)])
    assert echoed(ok)["x-consumer-name"] == "alice"
    for headers in (
        [],
        [basic("alice", "wrong")],
        [basic("nobody", ALICE_PASSWORD)],
        [("Authorization", "Basic !!!not-base64")],
        [("Authorization", "Bearer abc")],
    ):
        response = request(secured.port, "GET", "/basic/x", headers=headers)
        assert response.status == 401, headers
        assert response.header("www-authenticate") == 'Basic realm="test realm", charset="UTF-8"'
    # The reason in the gateway's log shows the user as text, not a Python repr.
    log = secured.wait_log("unknown user 'nobody'")
    assert "b'nobody'" not in log


def test_values_from_requests_are_shown_as_text_in_log_lines():
    from fastgw.plugins.base import shown

    assert shown(b"bob") == "'bob'" and shown("RS256") == "'RS256'" and shown(None) == "none"
    assert shown(b"a\r\nforged: line") == "'a\\x0d\\x0aforged: line'"
    assert shown(b"\xe9t\xe9") == "'\xe9t\xe9'" and len(shown(b"x" * 500)) == 202


def test_basic_auth_is_cached_and_concurrent_requests_are_served(secured):
    with Client(secured.port) as client:
        for _ in range(20):  # one scrypt, then the cache: this stays fast
            response = client.request("GET", "/basic/y", headers=[basic("alice", ALICE_PASSWORD)])
            assert response.status == 200
    # Wrong passwords are verified off the event loop: other requests keep being served.
    with Client(secured.port) as slow, Client(secured.port) as fast:
        slow.sock.sendall(
            b"GET /basic/z HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
            + base64.b64encode(b"alice:bad")
            + b"\r\n\r\n"
        )
        assert fast.request("GET", "/open/x").status == 200
        assert b" 401 " in slow.sock.recv(65536)


# -- ip-restriction and trusted proxies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("forwarded", "status"),
    [
        (None, 403),  # the peer itself (127.0.0.1, a trusted proxy) is not allowed
        ("10.1.2.3", 200),
        ("10.9.1.1", 403),  # deny wins over allow
        ("10.1.2.3, 192.0.2.1", 403),  # the right-most untrusted address is the client
        ("192.0.2.1, 10.1.2.3", 200),
        ("10.1.2.3, 127.0.0.1", 200),  # trusted hops are skipped
        ("2001:db8::5", 200),
        ("2001:db9::5", 403),
        ("not-an-address", 403),  # garbage stops the walk at the last trusted hop
    ],
)
def test_ip_restriction_behind_trusted_proxies(secured, forwarded, status):
    headers = [("X-Forwarded-For", forwarded)] if forwarded else []
    response = request(secured.port, "GET", "/ip/x", headers=headers)
    assert response.status == status
    if status == 403:
        assert response.json()["error"] == "access from this address is not allowed"


# -- cors -----------------------------------------------------------------------------------------


def preflight(port: int, origin: str, path: str = "/cors/x"):
    return request(
        port,
        "OPTIONS",
        path,
        headers=[
            ("Origin", origin),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
    )


def test_cors_preflight_is_answered_by_the_gateway(secured, upstream):
    before = request(upstream.port, "GET", "/stats").json()["options"]
    for origin in ("https://app.example.com", "https://api.trusted.org", "http://a.b.trusted.org"):
        response = preflight(secured.port, origin)
        assert response.status == 204, origin
        assert response.header("access-control-allow-origin") == origin
        assert response.header("access-control-allow-credentials") == "true"
        assert (
            response.header("access-control-allow-methods") == "GET, HEAD, PUT, PATCH, POST, DELETE"
        )
        assert response.header("access-control-allow-headers") == "Content-Type, Authorization"
        assert response.header("access-control-max-age") == "600"
        assert response.header("vary") == "Origin"
        assert response.header("content-length") is None and response.body == b""
    # Never forwarded: the upstream saw no OPTIONS request.
    assert request(upstream.port, "GET", "/stats").json()["options"] == before


def test_cors_disallowed_origin_gets_no_allow_headers(secured):
    for origin in ("https://evil.example.com", "https://trusted.org.evil.net", "null"):
        response = preflight(secured.port, origin)
        assert response.status == 403
        assert not [k for k, _ in response.headers if k.startswith("access-control-allow")]
    actual = request(
        secured.port,
        "GET",
        "/cors/x",
        headers=[("Origin", "https://evil.example.com"), ("apikey", "bob-key")],
    )
    assert actual.status == 200
    assert actual.header("access-control-allow-origin") is None
    assert "Origin" in actual.all("vary")


def test_cors_headers_on_proxied_and_local_responses(secured):
    origin = [("Origin", "https://app.example.com")]
    proxied = request(secured.port, "GET", "/cors/x", headers=[*origin, ("apikey", "bob-key")])
    assert proxied.status == 200
    assert proxied.header("access-control-allow-origin") == "https://app.example.com"
    assert proxied.header("access-control-expose-headers") == "X-Total"
    # A 401 from key-auth carries them too, so the browser can read the error.
    refused = request(secured.port, "GET", "/cors/x", headers=origin)
    assert refused.status == 401
    assert refused.header("access-control-allow-origin") == "https://app.example.com"
    star = request(secured.port, "GET", "/anycors/x", headers=[("Origin", "https://x.test")])
    assert star.header("access-control-allow-origin") == "*"
    assert star.header("access-control-allow-credentials") is None
    anycors = preflight(secured.port, "https://x.test", "/anycors/x")
    assert anycors.status == 204
    assert anycors.header("access-control-allow-headers") == "content-type"  # reflected


# -- global plugins, overrides, a plugin module --------------------------------------------------


def test_global_plugin_and_per_route_switch_off(secured):
    echoed_id = request(secured.port, "GET", "/open/x", headers=[("X-Request-ID", "abc-123")])
    assert echoed_id.header("x-request-id") == "abc-123"
    generated = request(secured.port, "GET", "/open/x")
    assert generated.header("x-request-id") == echoed(generated)["x-request-id"]
    assert request(secured.port, "GET", "/plain/x").header("x-request-id") is None
    missing = request(secured.port, "GET", "/key/x")
    assert missing.status == 401 and len(missing.all("x-request-id")) == 1


def test_plugin_module_hooks_run_in_order(secured):
    assert (
        request(secured.port, "DELETE", "/audited/x", headers=[("apikey", "bob-key")]).status == 405
    )
    ok = request(secured.port, "GET", "/audited/x", headers=[("apikey", "bob-key")])
    assert ok.status == 200 and ok.header("x-audited") == "yes"
    assert request(secured.port, "GET", "/audited/x").status == 401  # key-auth runs first
    expected = ["audited DELETE 405 bob", "audited GET 200 bob", "audited GET 401 -"]

    def logged() -> bool:
        return secured.audit.exists() and secured.audit.read_text().splitlines()[-3:] == expected

    wait_for(logged, what="three audit lines")


def test_plugins_follow_a_reload(secured, upstream):
    config = json.loads(json.dumps(secured.config))
    config["routes"][0]["plugins"] = {"key-auth": {"enabled": False}}
    secured.write_config(config)
    secured.signal(1)
    secured.wait_log("config version 2 .* live")
    assert request(secured.port, "GET", "/key/x").status == 200
    assert request(secured.port, "GET", "/hidden/x").status == 401


def test_readme_quick_start_works_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    one_liner = re.search(r"TOKEN=\$\(\.venv/bin/python -c '(.+?)'\)", readme)[1]
    token = subprocess.run(
        [sys.executable, "-c", one_liner], capture_output=True, text=True, check=True
    ).stdout.strip()
    with demo(tmp_path, "auth.yaml") as port:
        refused = request(port, "GET", "/keys/hello")
        assert refused.status == 401 and refused.header("www-authenticate") == 'Key realm="fastgw"'
        ok = request(port, "GET", "/keys/hello", headers=[("apikey", "alice-secret-key")])
        assert ok.status == 200
        seen = dict(ok.json()["headers"])
        assert seen["X-Consumer-Name"] == "alice" and "apikey" not in seen
        by_token = request(
            port, "GET", "/tokens/hello", headers=[("Authorization", f"Bearer {token}")]
        )
        assert (
            by_token.status == 200 and dict(by_token.json()["headers"])["X-Auth-Subject"] == "alice"
        )
        assert (
            request(port, "GET", "/admin/x", headers=[("apikey", "alice-secret-key")]).status == 200
        )


def test_docs_show_the_example_plugin_as_it_is():
    example = (ROOT / "tests" / "example_plugin.py").read_text()
    assert example in (ROOT / "docs" / "plugins.md").read_text()


def test_a_plugin_module_given_as_a_file_next_to_the_config(upstream, tmp_path):
    """The documented example plugin as a file beside the config: loaded by the installed
    command without PYTHONPATH, and by the workers when a reload first names it."""
    (tmp_path / "plugins").mkdir()
    shutil.copy(ROOT / "tests" / "example_plugin.py", tmp_path / "plugins" / "audit.py")
    config = base_config(upstream.url)
    gw = Gateway(tmp_path, config).start()
    try:
        audit = tmp_path / "audit.log"
        config["server"]["plugin_modules"] = ["./plugins/audit.py"]
        config["routes"][0]["plugins"] = {"audit-log": {"path": str(audit)}}
        gw.write_config(config)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        check = subprocess.run(
            [str(Path(sys.executable).parent / "fastgw"), "check", "-c", str(gw.config_path)],
            capture_output=True,
            text=True,
            cwd="/",
            env=env,
        )
        assert check.returncode == 0, check.stderr
        gw.signal(signal.SIGHUP)
        gw.wait_log("config version 2 .* live")
        got = request(gw.port, "GET", "/echo")
        assert got.status == 200 and got.header("x-audited") == "yes"
        wait_for(lambda: audit.exists() and "all GET 200" in audit.read_text(), what="audit")
        config["server"]["plugin_modules"] = ["./plugins/missing.py"]
        gw.write_config(config)
        check = subprocess.run(
            [str(Path(sys.executable).parent / "fastgw"), "check", "-c", str(gw.config_path)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert check.returncode == 1
        assert (
            "server.plugin_modules: cannot import plugin module './plugins/missing.py': "
            f"FileNotFoundError: no file {tmp_path / 'plugins' / 'missing.py'}" in check.stderr
        )
    finally:
        gw.stop()
