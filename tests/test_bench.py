"""A fast smoke run of the bench (a few hundred requests per target; no figures asserted)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from .support import ROOT

TOOLS = all(shutil.which(t) for t in ("wrk", "h2load", "nginx"))


def bench(tmp_path, *args, env=None):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", *args, "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads(out.read_text())


@pytest.mark.skipif(
    not TOOLS and not os.environ.get("CI"), reason="wrk, h2load or nginx not installed"
)
def test_bench_smoke_with_wrk_h2load_and_nginx(tmp_path):
    stdout, data = bench(tmp_path, "small", "latency", "routes10k")
    small = data["results"]["small"]["summary"]
    assert set(small) == {"direct", "fastgw", "nginx"}
    for target in small.values():
        assert target["tool"] == "wrk"
        assert target["rps"] > 0 and target["errors"] == 0
    assert small["fastgw"]["cpu_us_per_request"] > 0
    assert small["fastgw"]["vs_direct"] > 0 and small["fastgw"]["vs_nginx"] > 0
    latency = data["results"]["latency"]["summary"]
    assert latency["fastgw"]["tool"] == "h2load" and latency["fastgw"]["requests"] > 100
    assert "added_p99_ms" in latency["fastgw"]
    assert set(data["results"]["routes10k"]["summary"]) == {"fastgw-10", "fastgw-10k"}
    assert "small: GET 12-byte response" in stdout
    assert "built-in" not in stdout


def test_bench_smoke_without_the_tools_falls_back_and_says_so(tmp_path):
    # A PATH with only Python on it: no wrk, h2load, nginx (nor git).
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    stdout, data = bench(tmp_path, "small", "latency", env=env)
    assert "throughput from the built-in generator" in stdout
    assert "fixed-rate latency from the built-in generator" in stdout
    assert "nginx not installed: no reference column" in stdout
    fastgw = data["results"]["small"]["summary"]["fastgw"]
    assert fastgw["tool"] == "built-in"
    assert fastgw["rps"] > 0 and fastgw["errors"] == 0
    assert set(data["results"]["small"]["summary"]) == {"direct", "fastgw"}
    assert data["results"]["latency"]["summary"]["fastgw"]["tool"] == "built-in"


def test_bench_builtin_flag_uses_the_builtin_generator(tmp_path):
    _, data = bench(tmp_path, "small", "--builtin")
    assert data["results"]["small"]["summary"]["fastgw"]["tool"] == "built-in"
    assert any("built-in" in note for note in data["notes"])


def test_bench_minimal_adds_the_yardstick_proxy(tmp_path):
    _, data = bench(tmp_path, "small", "latency", "--minimal", "--builtin")
    for scenario in ("small", "latency"):
        minimal = data["results"][scenario]["summary"]["minimal"]
        assert minimal["requests"] > 100 and minimal["errors"] == 0
    assert data["results"]["latency"]["summary"]["minimal"]["added_p50_ms"] is not None


def test_bench_upstream_rejects_bad_arguments_clearly():
    result = subprocess.run(
        [sys.executable, "-m", "bench.upstream", "--size", "lots"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--size: expected a size such as 16384, 16KiB or 10MiB, got 'lots'" in result.stderr
