"""Load generators: wrk (throughput), h2load (fixed rate, per-request log), or the built-in one.

Each returns the same dict: requests, errors, seconds, and p50/p90/p99/p999 in microseconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from .load import percentile
from .procs import ROOT, pinned

WRK_SCRIPT = """
wrk.method = "{method}"
{body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {{"requests": %d, "seconds": %f, "errors": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}\\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
"""


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def run_tool(args: list[str], duration: float, cpu: str | None) -> str:
    """Run a load generator (on `cpu` if given) for about `duration` s; its standard output."""
    done = subprocess.run(
        [*pinned(cpu), *args], capture_output=True, text=True, timeout=duration + 60, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def wrk(
    url: str,
    connections: int,
    duration: float,
    workdir: Path,
    cpu: str | None,
    method: str = "GET",
    body_size: int = 0,
    headers: tuple[tuple[str, str], ...] = (),
) -> dict:
    script = workdir / f"wrk-{method}-{body_size}-{len(headers)}.lua"
    body = f'wrk.body = string.rep("x", {body_size})' if body_size else ""
    lines = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers)
    script.write_text(WRK_SCRIPT.format(method=method, body=body, headers=lines))
    out = run_tool(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        duration,
        cpu,
    )
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT ") :]), tool="wrk")


def h2load(
    url: str, connections: int, duration: float, rps: float, workdir: Path, cpu: str | None
) -> dict:
    """Paced load; percentiles from h2load's per-request log (microsecond resolution)."""
    log = workdir / "h2load.log"
    log.unlink(missing_ok=True)
    per_client = max(1, round(rps / connections))
    run_tool(
        [
            "h2load",
            "--h1",
            "-c",
            str(connections),
            "--rps",
            str(per_client),
            "-D",
            str(int(duration)),
            "--log-file",
            str(log),
            url,
        ],
        duration,
        cpu,
    )
    latencies = []
    errors = 0
    for line in log.read_text().splitlines():
        _, status, micros = line.split("\t")[:3]
        latencies.append(int(micros))
        errors += not status.startswith("2")
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": duration,
        "tool": "h2load",
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "p999": percentile(latencies, 99.9),
    }


def builtin(
    url: str,
    connections: int,
    duration: float,
    cpu: str | None,
    method: str = "GET",
    body_size: int = 0,
    rps: float = 0.0,
    headers: tuple[tuple[str, str], ...] = (),
) -> dict:
    out = run_tool(
        [
            sys.executable,
            "-m",
            "bench.load",
            "--url",
            url,
            "--connections",
            str(connections),
            "--duration",
            str(duration),
            "--method",
            method,
            "--body-size",
            str(body_size),
            "--rps",
            str(rps),
            *(f"--header={name}: {value}" for name, value in headers),
        ],
        duration,
        cpu,
    )
    return dict(json.loads(out.splitlines()[-1]), tool="built-in")
