"""Config loading and validation: every error class, with its path, all at once."""

import subprocess
import sys
import textwrap

import pytest

from fastgw.config.loader import ConfigError, load, validate

from .support import ROOT

GOOD = {
    "upstreams": {"echo": {"targets": [{"url": "http://127.0.0.1:9001"}]}},
    "routes": [{"name": "echo", "match": {"paths": ["/echo/*"]}, "upstream": "echo"}],
}


def errors_of(document):
    with pytest.raises(ConfigError) as info:
        validate(document)
    return info.value.errors


def test_defaults_are_secure_and_documented():
    config = validate(GOOD)
    assert config.server.workers == 1
    assert config.server.listen[0].address == ("127.0.0.1", 8080)
    assert config.server.limits.max_header_bytes == 16384
    assert config.server.limits.max_body_bytes == 10 * 1024 * 1024
    assert config.server.timeouts.client_header == 10.0
    assert config.upstreams["echo"].pool.max_idle == 64
    assert config.routes[0].preserve_host is True
    assert config.routes[0].strip_prefix is False


def test_every_error_is_reported_at_once_with_its_path():
    document = {
        "server": {
            "workers": 0,
            "timeouts": {"keepalive": "5 minutes"},
            "limits": {"max_body_bytes": "10MB"},
            "lisen": "x",
        },
        "upstreams": {
            "echo": {"targets": [{"url": "http://127.0.0.1:9001", "weight": "1"}]},
            "users": {"targets": [{"url": "127.0.0.1:9002"}]},
        },
        "routes": [
            {"match": {"paths": ["/a"]}, "upstream": "userz"},
            {"match": {"paths": ["/b"], "methods": "GET"}, "upstream": "echo"},
            {"match": {"paths": ["/c"]}, "upstream": "echo", "strip_prefix": "yes"},
        ],
    }
    errors = errors_of(document)
    expected = [
        "server.lisen: unknown key (expected one of: listen, workers, admin, limits, timeouts, paths, trusted_proxies, plugin_modules, state_dir, access_log)",
        'server.workers: expected an integer >= 1 or "auto", got 0',
        "server.limits.max_body_bytes: expected a size such as 16384, 16KiB or 10MiB, got '10MB'",
        "server.timeouts.keepalive: expected a duration such as 250ms, 10s, 5m, 1h, 1d or plain seconds, got '5 minutes'",
        "upstreams.echo.targets[0].weight: expected an integer >= 0 <= 10000, got '1'",
        "upstreams.users.targets[0].url: expected a URL 'http://host:port' or 'https://host:port' such as 'http://127.0.0.1:9001', got '127.0.0.1:9002'",
        "routes[0].upstream: unknown upstream 'userz' (known: echo, users)",
        "routes[1].match.methods: expected a list, got 'GET'",
        "routes[2].strip_prefix: expected true or false, got 'yes'",
    ]
    assert sorted(errors) == sorted(expected)


def test_ties_are_errors_but_more_specific_routes_are_not():
    base = {"upstreams": GOOD["upstreams"]}
    tie = dict(
        base,
        routes=[
            {"match": {"paths": ["/users/{id}"]}, "upstream": "echo"},
            {"match": {"paths": ["/users/{name}"]}, "upstream": "echo"},
        ],
    )
    (error,) = errors_of(tie)
    assert error.startswith("routes[1].match: ties with routes[0] on path '/users/{name}'")
    fine = dict(
        base,
        routes=[
            {"match": {"paths": ["/users/{id}"]}, "upstream": "echo"},
            {"match": {"paths": ["/users/{id}"], "methods": ["POST"]}, "upstream": "echo"},
            {"match": {"paths": ["/users/{id}"], "hosts": ["a.example.com"]}, "upstream": "echo"},
            {"match": {"paths": ["/users/*"]}, "upstream": "echo"},
            {"match": {"paths": ["/x"], "methods": ["GET"]}, "upstream": "echo"},
            {"match": {"paths": ["/x"], "methods": ["POST"]}, "upstream": "echo"},
        ],
    )
    validate(fine)
    same_methods = dict(
        base,
        routes=[
            {"match": {"paths": ["/x"], "methods": ["GET", "PUT"]}, "upstream": "echo"},
            {"match": {"paths": ["/x"], "methods": ["PUT"]}, "upstream": "echo"},
        ],
    )
    assert "ties with routes[0]" in errors_of(same_methods)[0]


def test_bad_paths_hosts_and_names():
    document = {
        "upstreams": GOOD["upstreams"],
        "routes": [
            {"match": {"paths": ["api/*"]}, "upstream": "echo"},
            {"match": {"paths": ["/api*"]}, "upstream": "echo"},
            {"match": {"paths": ["/a/*/b"]}, "upstream": "echo"},
            {"match": {"paths": ["/ok"], "hosts": ["bad host"]}, "upstream": "echo"},
            {"name": "dup", "match": {"paths": ["/p"]}, "upstream": "echo"},
            {"name": "dup", "match": {"paths": ["/q"]}, "upstream": "echo"},
            {"match": {"paths": []}, "upstream": "echo"},
            {"upstream": "echo"},
        ],
    }
    errors = errors_of(document)
    joined = "\n".join(errors)
    for path in (
        "routes[0].match.paths[0]",
        "routes[1].match.paths[0]",
        "routes[2].match.paths[0]",
    ):
        assert f"{path}: expected a path starting with '/'" in joined
    assert "routes[3].match.hosts[0]: expected a host name" in joined
    assert "routes[5].name: duplicate route name 'dup' (also routes[4])" in joined
    assert "routes[6].match.paths: expected at least 1 item(s)" in joined
    assert "routes[7].match: required key is missing" in joined


def test_units():
    config = validate(
        {
            "server": {
                "timeouts": {"client_header": "250ms", "keepalive": "5m", "drain": 7},
                "limits": {
                    "max_header_bytes": "16KiB",
                    "max_body_bytes": "1GiB",
                    "max_request_line": 100,
                },
            },
            "upstreams": {
                "u": {
                    "targets": [{"url": "http://[::1]:80"}],
                    "timeouts": {"read": "1h", "connect": 0.5},
                }
            },
            "routes": [{"match": {"paths": ["/*"]}, "upstream": "u"}],
        }
    )
    assert config.server.timeouts.client_header == 0.25
    assert config.server.timeouts.keepalive == 300
    assert config.server.timeouts.drain == 7
    assert config.server.limits.max_header_bytes == 16384
    assert config.server.limits.max_body_bytes == 1 << 30
    assert config.upstreams["u"].timeouts.read == 3600
    assert config.upstreams["u"].targets[0].url == ("http", "::1", 80)


def test_listen_forms_and_workers_auto():
    config = validate(
        {
            "server": {
                "listen": ["127.0.0.1:1", {"address": "[::1]:2"}, "0.0.0.0:3"],
                "workers": "auto",
            },
            **GOOD,
        }
    )
    assert [lst.address for lst in config.server.listen] == [
        ("127.0.0.1", 1),
        ("::1", 2),
        ("0.0.0.0", 3),
    ]
    assert config.server.workers == "auto"
    errors = errors_of({"server": {"listen": ["127.0.0.1:99999", {"adress": "x"}], "admin": 5}})
    assert (
        "server.listen[0].address: expected an address 'host:port'" in errors[0]
        or "server.listen[0]" in errors[0]
    )
    assert any(e.startswith("server.listen[1].adress: unknown key") for e in errors)
    assert any(e.startswith("server.admin: expected an address") for e in errors)


def test_top_level_and_syntax_errors(tmp_path):
    assert errors_of({"route": [], **GOOD}) == [
        "route: unknown key (expected one of: server, upstreams, routes, plugins, consumers, redis, "
        "plans, tracing, metrics)"
    ]
    assert errors_of([1]) == ["expected a mapping at the top level, got [1]"]
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("server: [\n")
    with pytest.raises(ConfigError) as info:
        load(bad_yaml)
    assert info.value.errors[0].startswith("invalid YAML")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("server = [\n")
    with pytest.raises(ConfigError) as info:
        load(bad_toml)
    assert info.value.errors[0].startswith("invalid TOML")
    other = tmp_path / "conf.json"
    other.write_text("{}")
    with pytest.raises(ConfigError) as info:
        load(other)
    assert "unknown file type '.json'" in info.value.errors[0]
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.yaml")
    assert "cannot read file" in info.value.errors[0]


def test_shipped_yaml_and_toml_are_the_same_config():
    yaml_config = load(ROOT / "config" / "fastgw.yaml").config
    toml_config = load(ROOT / "config" / "fastgw.toml").config
    assert yaml_config == toml_config
    assert yaml_config.routes


def fastgw(*args):
    return subprocess.run(
        [sys.executable, "-m", "fastgw", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )


def test_check_command(tmp_path):
    result = fastgw("check", "-c", "config/fastgw.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: config/fastgw.yaml")
    assert "2 route(s), 1 upstream(s), 1 target(s)" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent("""
        upstreams:
          echo: {targets: [{url: "http://127.0.0.1:1"}]}
        routes:
          - {match: {paths: ["/a"]}, upstream: userz}
          - {match: {paths: ["/b"]}, upstream: echo, strip_prefix: 3}
    """)
    )
    result = fastgw("check", "-c", str(bad))
    assert result.returncode == 1
    assert "2 error(s)" in result.stderr and not result.stdout  # errors go to stderr
    assert "routes[0].upstream: unknown upstream 'userz' (known: echo)" in result.stderr
    assert "routes[1].strip_prefix: expected true or false, got 3" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_routes_command():
    result = fastgw("routes", "-c", "config/fastgw.toml")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PATH", "METHODS", "HOSTS", "ROUTE", "UPSTREAM", "OPTIONS"]
    # Most specific first (a parameter beats a wildcard), as the README says.
    assert lines[1].split() == ["/users/{id}", "*", "*", "echo-users", "echo", "-"]
    assert lines[2].split() == ["/echo/*", "GET,HEAD,POST", "*", "echo", "echo", "-"]


def test_run_with_invalid_config_exits_1_with_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {workers: many}\n")
    result = fastgw("run", "-c", str(bad))
    assert result.returncode == 1
    assert "server.workers: expected an integer >= 1 or \"auto\", got 'many'" in result.stderr


EMPTY_SECTIONS = [
    "upstreams: expected at least one upstream (the section is missing or empty)",
    "routes: expected at least one route (the section is missing or empty)",
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", EMPTY_SECTIONS),
        ("# nothing here yet\n", EMPTY_SECTIONS),
        ("server:\n  workers: 1\n", EMPTY_SECTIONS),
        ("upstreams: {}\nroutes: []\n", EMPTY_SECTIONS),
        # cut off before `routes:`
        (
            "upstreams:\n  echo:\n    targets: [{url: 'http://127.0.0.1:9001'}]\n",
            EMPTY_SECTIONS[1:],
        ),
    ],
)
def test_a_config_without_upstreams_or_routes_is_an_error(tmp_path, text, expected):
    path = tmp_path / "fastgw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.errors == expected
    toml = tmp_path / "fastgw.toml"
    toml.write_text("")
    with pytest.raises(ConfigError) as info:
        load(toml)
    assert info.value.errors == EMPTY_SECTIONS
    check = subprocess.run(
        [sys.executable, "-m", "fastgw", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert check.returncode == 1 and expected[-1] in check.stderr


def test_yaml_booleans_are_true_and_false_only(tmp_path):
    """YAML 1.1 reads on/off/yes/no as booleans: `on:` would become the key True."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        textwrap.dedent(
            """
            upstreams:
              up:
                targets: [{url: "http://127.0.0.1:9001"}]
                health_check:
                  passive: {on: [connect_error, 503]}
            routes:
              - {match: {paths: ["/*"]}, upstream: up}
            """
        )
    )
    passive = load(path).config.upstreams["up"].health_check.passive
    assert passive.on == ("connect_error", 503)
    path.write_text(path.read_text().replace("health_check:", "tls_verify: yes\n    health_check:"))
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.errors == ["upstreams.up.tls_verify: expected true or false, got 'yes'"]


def test_the_readme_upstream_examples_load():
    """The YAML examples of the README's "Load balancing, health and failover" section are
    valid as written (with a route to the first upstream added where they have none)."""
    import re

    import yaml

    from fastgw.config.loader import YamlLoader

    text = (ROOT / "README.md").read_text()
    start = text.index("## Load balancing")
    section = text[start : text.index("\n## ", start)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 4
    for block in blocks:
        document = yaml.load(textwrap.dedent(block), Loader=YamlLoader)
        if "routes" not in document:
            route = {"match": {"paths": ["/*"]}, "upstream": next(iter(document["upstreams"]))}
            document["routes"] = [route]
        validate(document)


def test_the_admin_listener_without_a_host_binds_loopback_only():
    base = {
        "upstreams": {"up": {"targets": [{"url": "http://127.0.0.1:9001"}]}},
        "routes": [{"match": {"paths": ["/*"]}, "upstream": "up"}],
    }
    for admin in (":9901", {"address": ":9901"}):
        config = validate({**base, "server": {"admin": admin, "listen": ":8080"}})
        assert config.server.admin.address == ("127.0.0.1", 9901)
        assert config.server.listen[0].address == ("0.0.0.0", 8080)  # listeners: every address
    config = validate({**base, "server": {"admin": "0.0.0.0:9901"}})
    assert config.server.admin.address == ("0.0.0.0", 9901)  # asked for in so many words


# Four mistakes in one route.
TYPOS = """\
upstreams:
  billing: {targets: [{url: "http://127.0.0.1:9001"}]}
routes:
  - match: {paths: ["/a/*"]}
    strip_prefx: true
    upstream: biling
    mirror: {upstream: shadw}
    preserve_host: maybe
"""


def test_check_reports_a_misspelt_key_and_an_unknown_upstream_of_one_route_together(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(TYPOS)
    result = fastgw("check", "-c", str(bad))
    assert result.returncode == 1 and "4 error(s)" in result.stderr
    assert "routes[0].strip_prefx: unknown key" in result.stderr
    assert "routes[0].upstream: unknown upstream 'biling' (known: billing)" in result.stderr
    assert "routes[0].mirror.upstream: unknown upstream 'shadw' (known: billing)" in result.stderr


def test_routes_are_listed_most_specific_first():
    from fastgw.router import specificity

    patterns = ["/*", "/api/*", "/api/users/{id}", "/api/users/me", "/health"]
    ordered = sorted(patterns, key=specificity)
    assert ordered.index("/api/users/me") < ordered.index("/api/users/{id}")
    assert ordered.index("/api/users/{id}") < ordered.index("/api/*") < ordered.index("/*")
    assert ordered[-1] == "/*"


def test_version_command_and_flag():
    import platform

    for args in (("version",), ("--version",)):
        result = fastgw(*args)
        assert result.returncode == 0, result.stderr
        line = result.stdout.strip()
        assert line.startswith("fastgw 0.1.0 (Python " + platform.python_version())
        assert "uvloop 0." in line and "httptools 0." in line


def test_errors_of_a_yaml_file_carry_line_and_column(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(TYPOS)
    with pytest.raises(ConfigError) as caught:
        load(bad)
    shown = caught.value.shown
    assert f"{bad}:5:5: routes[0].strip_prefx: unknown key" in shown[0]  # at the key
    assert f"{bad}:6:15: routes[0].upstream: unknown upstream 'biling'" in "\n".join(shown)
    assert f"{bad}:8:20: routes[0].preserve_host: expected true or false" in "\n".join(shown)
    assert caught.value.errors[0].startswith("routes[0].strip_prefx: unknown key")  # the path


def test_a_yaml_syntax_error_is_shown_with_the_line_quoted(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("server:\n  listen: 127.0.0.1: 8080\nroutes: []\n")
    result = fastgw("check", "-c", str(bad))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if "invalid YAML" in line)
    assert lines[at].strip() == (f"{bad}:2:20: invalid YAML: mapping values are not allowed here")
    assert lines[at + 1].strip() == "2 |   listen: 127.0.0.1: 8080"
    assert lines[at + 2].endswith("| " + " " * 19 + "^")  # under the second colon


WARNED = """\
upstreams:
  up: {targets: [{url: "http://127.0.0.1:9001", weight: 0}, {url: "http://127.0.0.1:9002", weight: 0}]}
  ok: {targets: [{url: "http://127.0.0.1:9003"}]}
plugins:
  jwt-auth: {algorithms: [HS256], secret: "short-secret"}
routes:
  - {name: any, match: {paths: ["/*"]}, upstream: up}
  - {name: api, match: {paths: ["/api/*"]}, upstream: ok}
"""


def test_check_warns_of_valid_but_wrong_configs_without_failing(tmp_path):
    path = tmp_path / "warned.yaml"
    path.write_text(WARNED)
    result = fastgw("check", "-c", str(path))
    assert result.returncode == 0 and result.stdout.startswith("ok: ")
    assert result.stderr.splitlines() == [
        "warning: plugins.jwt-auth.secret: an HMAC secret of 12 bytes is easy to guess offline "
        "from one token; use 32 random bytes or more",
        "warning: upstreams.up.targets: every target has weight 0: requests to it are answered 503",
    ]
    # A catch-all listed before a more specific route does not shadow it: no warning, and
    # the specific route wins (equally specific overlapping routes are errors instead).
    assert "api" not in result.stderr
    assert load(path).warnings[1].startswith("upstreams.up.targets")


def test_warnings_are_logged_when_the_gateway_loads(upstream, tmp_path):
    from .support import Gateway, base_config

    config = base_config(upstream.url)
    config["plugins"] = {"jwt-auth": {"algorithms": ["HS256"], "secret": "0123456789"}}
    gw = Gateway(tmp_path, config).start()
    try:
        gw.wait_log("config warning: plugins.jwt-auth.secret: an HMAC secret of 10 bytes")
    finally:
        gw.stop()
