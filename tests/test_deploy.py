"""The files shipped for running fastgw under systemd: the unit carries the directives the
operations issue names and passes `systemd-analyze verify`, its paths are those the README's
install commands create (run here into a temporary prefix: a clean venv, `pip install .`,
the unit's `ExecStartPre` on the shipped config), and the logrotate file parses and reopens
the logs with SIGUSR1."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support import ROOT

UNIT = ROOT / "deploy" / "fastgw.service"
LOGROTATE = ROOT / "deploy" / "logrotate"
REQUIRED = {
    "Type": "notify",
    "ExecStartPre": "/opt/fastgw/bin/fastgw check -c /etc/fastgw/fastgw.yaml",
    "ExecStart": "/opt/fastgw/bin/fastgw run -c /etc/fastgw/fastgw.yaml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
    "WatchdogSec": "30s",
    "LimitNOFILE": "65536",
    "DynamicUser": "yes",
    "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ConfigurationDirectory": "fastgw",
    "StateDirectory": "fastgw",
    "LogsDirectory": "fastgw",
}


def directives(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def required_tool(name: str) -> str:
    """A tool CI installs (never skipped under CI=true)."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (CI installs it with apt-get)")
        pytest.skip(f"{name} not installed")
    return found


def test_the_unit_has_every_directive_and_outlasts_the_drain():
    found = directives(UNIT)
    for key, value in REQUIRED.items():
        assert found.get(key) == value, key
    stop = int(found["TimeoutStopSec"].rstrip("s"))
    assert stop > 30  # server.timeouts.drain's default


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = required_tool("systemd-analyze")
    root = tmp_path / "root"
    # An alternate root with systemd's own units, the unit where the README puts it, and the
    # commands it runs where the documented install puts them.
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/fastgw.service")
    for command, source in (
        ("opt/fastgw/bin/fastgw", str(Path(sys.executable).parent / "fastgw")),
        ("bin/kill", shutil.which("kill") or "/bin/kill"),
    ):
        (root / command).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / command)
    done = subprocess.run(
        [analyze, "verify", f"--root={root}", "fastgw.service"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fastgw.service" not in done.stderr, done.stderr  # no warning about the unit


def readme_install() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run as a systemd service", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line.split("#")[0].strip() for line in block[1].splitlines() if line.strip()]


def test_the_readme_installs_where_the_unit_looks_and_its_check_passes(tmp_path):
    commands = readme_install()
    assert commands[0] == "python3 -m venv /opt/fastgw && /opt/fastgw/bin/pip install ."
    assert "install -m 644 deploy/fastgw.service /etc/systemd/system/fastgw.service" in commands
    assert "install -D -m 644 config/fastgw.yaml /etc/fastgw/fastgw.yaml" in commands
    assert "install -m 644 deploy/logrotate /etc/logrotate.d/fastgw" in commands
    assert commands[-1] == "systemctl daemon-reload && systemctl enable --now fastgw"
    # The first two steps as written, into a temporary prefix instead of /opt.
    prefix = tmp_path / "opt" / "fastgw"
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True)
    installed = subprocess.run(
        [str(prefix / "bin" / "pip"), "install", "-q", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    etc = tmp_path / "etc" / "fastgw"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / "config" / "fastgw.yaml", etc / "fastgw.yaml")
    pre = directives(UNIT)["ExecStartPre"].replace("/opt/fastgw", str(prefix))
    pre = pre.replace("/etc/fastgw", str(etc))
    check = subprocess.run(pre.split(), capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0 and check.stdout.startswith("ok: "), check.stderr
    version = subprocess.run(
        [str(prefix / "bin" / "fastgw"), "version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("fastgw ")


def test_logrotate_parses_the_file_and_reopens_with_sigusr1(tmp_path):
    logrotate = required_tool("logrotate")
    done = subprocess.run(
        [logrotate, "--debug", "--state", str(tmp_path / "state"), str(LOGROTATE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    text = LOGROTATE.read_text()
    assert "/var/log/fastgw/*.log" in text and "daily" in text
    assert "systemctl kill --kill-whom=main --signal=SIGUSR1 fastgw.service" in text


def test_the_package_builds_a_pure_python_wheel(tmp_path):
    """No compiler needed: fastgw's wheel is pure Python (its dependencies ship wheels)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("fastgw-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "fastgw/observe/dashboard.html" in names  # package data included
