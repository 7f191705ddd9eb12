"""The admin API end to end (a real gateway with two workers): GET /config with every secret
redacted, GET /routes, GET /upstreams merged over workers, POST /reload (valid: the new
version; invalid: 400 with each error's path and message, the old config serving on),
POST /cache/purge reserved, the token rule, and `fastgw status`."""

from __future__ import annotations

import subprocess
import sys

from fastgw.plugins.passwords import hash_password

from .support import ROOT, Gateway, base_config, free_port, in_parallel, request, wait_for

TOKEN = "admin-token-abcdef0123456789"
SECRETS = {
    "api key": "consumer-api-key-7f3a9",
    "basic password": "basic-password-5521",
    "jwt secret": "jwt-hmac-secret-that-is-long-enough-0001",
    "client secret": "introspection-client-secret-77",
    "redis password": "redis-password-4242",
    "environment secret": "from-the-environment-1234",
}


def secret_config(upstream_url: str) -> dict:
    config = base_config(upstream_url, workers=2)
    config["server"]["admin"] = {"address": f"127.0.0.1:{free_port()}", "token": TOKEN}
    config["upstreams"]["up"]["targets"].append({"url": "http://127.0.0.1:9", "weight": 3})
    config["upstreams"]["up"]["health_check"] = {"passive": {"max_failures": 1}}
    config["redis"] = {"url": f"redis://:{SECRETS['redis password']}@127.0.0.1:6379/0"}
    password_hash = hash_password(SECRETS["basic password"])
    SECRETS["password hash"] = password_hash.split("$")[-1]
    config["consumers"] = [
        {
            "name": "alice",
            "key_auth": {"keys": [SECRETS["api key"], "${EXTRA_KEY}"]},
            "basic_auth": {"password_hash": password_hash},
        }
    ]
    config["routes"].append(
        {
            "name": "tokens",
            "match": {"paths": ["/tokens/*"]},
            "upstream": "up",
            "plugins": {
                "jwt-auth": {"algorithms": ["HS256"], "secret": SECRETS["jwt secret"]},
            },
        }
    )
    config["routes"].append(
        {
            "name": "opaque",
            "match": {"paths": ["/opaque/*"]},
            "upstream": "up",
            "plugins": {
                "oauth2-introspection": {
                    "endpoint": "http://127.0.0.1:9/introspect",
                    "client_id": "gateway",
                    "client_secret": SECRETS["client secret"],
                }
            },
        }
    )
    return config


def admin(gw: Gateway, method: str, path: str, token: str | None = TOKEN):
    headers = [("Authorization", f"Bearer {token}")] if token else []
    return request(gw.admin_port, method, path, headers=headers)


def test_the_admin_api(upstream, tmp_path):
    config = secret_config(upstream.url)
    gw = Gateway(tmp_path, config).start(env={"EXTRA_KEY": SECRETS["environment secret"]})
    try:
        # -- GET /config: nothing secret anywhere in it
        for path in ("/config", "/routes", "/upstreams"):
            assert admin(gw, "GET", path, token=None).status == 401
        got = admin(gw, "GET", "/config")
        assert got.status == 200 and got.header("content-type") == "application/json"
        text = got.body.decode()
        for what, secret in SECRETS.items():
            assert secret not in text, what
        assert TOKEN not in text
        live = got.json()
        assert live["digest"] and live["source"].endswith("fastgw.yaml")
        keys = live["config"]["consumers"][0]["key_auth"]["keys"]
        assert keys == ["<redacted>", "<redacted>"]
        assert live["config"]["redis"]["url"] == "redis://:<redacted>@127.0.0.1:6379/0"
        assert live["config"]["server"]["admin"]["token"] == "<redacted>"
        assert live["config"]["server"]["workers"] == 2  # the rest is all there
        # -- GET /routes: the table of `fastgw routes`
        table = admin(gw, "GET", "/routes").json()
        assert [row["route"] for row in table] == ["tokens", "opaque", "all"]
        assert table[0]["options"] == "plugins:jwt-auth"
        printed = subprocess.run(
            [sys.executable, "-m", "fastgw", "routes", "-c", str(gw.config_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"EXTRA_KEY": "x-key-value", "PATH": "/usr/bin:/bin"},
        ).stdout.splitlines()
        assert [line.split()[3] for line in printed[1:]] == ["tokens", "opaque", "all"]
        # -- GET /upstreams: merged over both workers
        in_parallel(lambda: [request(gw.port, "GET", "/echo") for _ in range(10)], 4)
        (up,) = admin(gw, "GET", "/upstreams").json()
        assert up["upstream"] == "up" and up["balancer"] == "round_robin"
        alive, dead = up["targets"]
        assert (alive["weight"], dead["weight"]) == (1, 3)
        assert alive["healthy"] and not dead["healthy"]
        assert dead["ejected_in_workers"] >= 1 and len(dead["passive"]) == 2
        wait_for(
            lambda: admin(gw, "GET", "/upstreams").json()[0]["targets"][0]["idle"] >= 2,
            what="both workers' pooled connections",
        )
        # -- POST /reload: valid
        config["routes"][0]["name"] = "renamed"
        gw.write_config(config)
        reloaded = admin(gw, "POST", "/reload")
        assert reloaded.status == 200 and reloaded.json()["version"] == 2
        assert admin(gw, "GET", "/routes").json()[-1]["route"] == "renamed"
        assert admin(gw, "GET", "/reload").status == 405
        # -- POST /reload: invalid, every error with its path, the old config serving on
        config["routes"][0]["strip_prefx"] = True
        config["routes"][0]["upstream"] = "upp"
        gw.write_config(config)
        refused = admin(gw, "POST", "/reload")
        assert refused.status == 400
        assert refused.json()["errors"] == [
            {
                "path": "routes[0].strip_prefx",
                "message": "unknown key (expected one of: match, upstream, mirror, name, "
                "strip_prefix, preserve_host, plugins)",
            },
            {"path": "routes[0].upstream", "message": "unknown upstream 'upp' (known: up)"},
        ]
        assert request(gw.port, "GET", "/echo").status == 200
        assert request(gw.admin_port, "GET", "/readyz").json()["config_version"] == 2
        # -- reserved
        purge = admin(gw, "POST", "/cache/purge")
        assert purge.status == 501 and "caching" in purge.json()["error"]
        # -- fastgw status: from the config file (its admin address and token)
        del config["routes"][0]["strip_prefx"]
        config["routes"][0]["upstream"] = "up"
        gw.write_config(config)
        status = subprocess.run(
            [sys.executable, "-m", "fastgw", "status", "-c", str(gw.config_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"EXTRA_KEY": SECRETS["environment secret"], "PATH": "/usr/bin:/bin"},
        )
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert lines[0].startswith(f"fastgw at 127.0.0.1:{gw.admin_port}: ready, config version 2")
        assert "2 worker(s)" in lines[0]
        assert any(line.strip().startswith("route renamed:") for line in lines)
        assert any("127.0.0.1:9 weight 3: DOWN" in line for line in lines)
        refused = status_of(f"127.0.0.1:{gw.admin_port}")
        assert refused.returncode == 1 and "wants the admin token" in refused.stderr
    finally:
        gw.stop()
    gone = status_of(f"127.0.0.1:{gw.admin_port}")
    assert gone.returncode == 1 and "no gateway answers" in gone.stderr


def status_of(address: str) -> subprocess.CompletedProcess:
    """`fastgw status --admin ADDRESS` without a token."""
    return subprocess.run(
        [sys.executable, "-m", "fastgw", "status", "--admin", address],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
