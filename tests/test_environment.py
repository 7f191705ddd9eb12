"""Environment variables in config values: `${NAME}`, `${NAME:-default}`, `$${` for a literal;
an unset variable is an error with its path; substituted values never appear in what
`fastgw check` and `fastgw routes` print."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from fastgw.config.environment import Substitution
from fastgw.config.loader import ConfigError, load

from .support import ROOT

CONFIG = textwrap.dedent("""\
    server:
      listen: "127.0.0.1:${PORT:-8080}"
      admin: {address: "127.0.0.1:9901", token: "${ADMIN_TOKEN}"}
    upstreams:
      up: {targets: [{url: "${UPSTREAM_URL}"}]}
    routes:
      - {match: {paths: ["/*"], headers: {X-Tenant: "${TENANT}"}}, upstream: up}
    consumers:
      - {name: a, key_auth: {keys: ["${API_KEY}"]}}
""")
GOOD = {
    "ADMIN_TOKEN": "admin-token-0123456789",
    "UPSTREAM_URL": "http://127.0.0.1:9001",
    "TENANT": "tenant-secret-42",
    "API_KEY": "api-key-secret-99",
}


def test_references_defaults_and_the_escape():
    found = Substitution({"A": "alpha", "EMPTY": ""})
    got = found.document(
        {"a": "${A}", "b": "x-${B:-beta}-y", "c": "$${A}", "d": ["${EMPTY:-fallback}"], 7: 7}
    )
    assert got == {"a": "alpha", "b": "x-beta-y", "c": "${A}", "d": ["fallback"], 7: 7}
    assert found.errors == [] and found.values == {"alpha": "${A}"}  # defaults are in the file
    missing = Substitution({})
    missing.document({"server": {"admin": {"token": "${TOKEN}"}}, "x": ["${A}", "${B}"]})
    assert missing.errors == [
        "server.admin.token: environment variable TOKEN is not set (use ${TOKEN:-default} "
        "for a default)",
        "x[0]: environment variable A is not set (use ${A:-default} for a default)",
        "x[1]: environment variable B is not set (use ${B:-default} for a default)",
    ]


def test_a_file_loads_with_its_variables_and_reports_the_unset_ones(tmp_path, monkeypatch):
    path = tmp_path / "fastgw.yaml"
    path.write_text(CONFIG)
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    loaded = load(path)
    assert loaded.config.server.admin.token == GOOD["ADMIN_TOKEN"]
    assert loaded.config.server.listen[0].address == ("127.0.0.1", 8080)
    assert loaded.redact(f"k={GOOD['API_KEY']}") == "k=${API_KEY}"
    monkeypatch.delenv("UPSTREAM_URL")
    monkeypatch.setenv("ADMIN_TOKEN", "shorty")
    with pytest.raises(ConfigError) as caught:
        load(path)
    errors = caught.value.errors
    assert (
        "upstreams.up.targets[0].url: environment variable UPSTREAM_URL is not set "
        "(use ${UPSTREAM_URL:-default} for a default)" in errors
    )
    # The invalid value is reported by its reference, not shown.
    assert any(e.startswith("server.admin.token:") and "${ADMIN_TOKEN}" in e for e in errors)
    assert "shorty" not in str(caught.value)


def test_check_and_routes_never_print_a_substituted_secret(tmp_path):
    path = tmp_path / "fastgw.yaml"
    path.write_text(CONFIG)
    env = dict(os.environ, PYTHONPATH=str(ROOT), **GOOD)
    printed = ""
    for command in ("check", "routes"):
        done = subprocess.run(
            [sys.executable, "-m", "fastgw", command, "-c", str(path)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        printed += done.stdout + done.stderr
    assert "headers:X-Tenant=${TENANT}" in printed
    for secret in GOOD.values():
        assert secret not in printed
    bad = dict(env, ADMIN_TOKEN="tiny-secret")
    done = subprocess.run(
        [sys.executable, "-m", "fastgw", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env=bad,
    )
    assert done.returncode == 1 and "${ADMIN_TOKEN}" in done.stderr
    assert "tiny-secret" not in done.stdout + done.stderr
