"""Load-test fastgw side by side with the upstream alone (the ceiling) and nginx (the reference).

`python -m bench.run SCENARIO... [--pin] [--json FILE] [--duration S] [--smoke] [--builtin]`

Scenarios: small, large, huge, upload, routes10k, idle, latency, workers, plugins (see
bench/README.md). Targets run interleaved (A B C A B C ...) against the same upstream with the
same load; ratios are paired per repetition. wrk measures throughput and h2load fixed-rate
latency; without them a built-in generator runs instead, and the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import tools
from .procs import (
    NGINX_BUFFERS,
    ROOT,
    BenchRedis,
    BenchUpstream,
    FastGW,
    Minimal,
    Nginx,
    cpu_seconds,
    free_port,
    nginx_available,
    redis_available,
    rss_kib,
)

SCENARIOS = (
    "small",
    "large",
    "huge",
    "upload",
    "routes10k",
    "idle",
    "latency",
    "workers",
    "plugins",
    "balancers",
    "features",
)


@dataclass
class Run:
    """Settings of this bench run and everything it measured."""

    workdir: Path
    duration: float
    reps: int | None
    pin: bool
    use_tools: bool
    smoke: bool
    minimal: bool = False
    notes: list[str] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)

    @property
    def proxy_cpu(self) -> str | None:
        return "0" if self.pin else None

    @property
    def load_cpu(self) -> str | None:
        return "1" if self.pin else None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            print(f"note: {text}", flush=True)


def load(
    run: Run,
    url: str,
    connections: int,
    duration: float,
    method: str = "GET",
    body_size: int = 0,
    rps: float = 0.0,
    headers: tuple[tuple[str, str], ...] = (),
) -> dict:
    """One measurement with the best generator available."""
    if rps:
        if run.use_tools and tools.have("h2load"):
            return tools.h2load(url, connections, duration, rps, run.workdir, run.load_cpu)
        run.note(
            "h2load not used (not installed or --builtin): fixed-rate latency from the built-in generator"
        )
        return tools.builtin(url, connections, duration, run.load_cpu, rps=rps)
    if run.use_tools and tools.have("wrk"):
        return tools.wrk(
            url, connections, duration, run.workdir, run.load_cpu, method, body_size, headers
        )
    run.note(
        "wrk not used (not installed or --builtin): throughput from the built-in generator (smoke quality)"
    )
    return tools.builtin(
        url, connections, duration, run.load_cpu, method, body_size, headers=headers
    )


def measure(run: Run, name: str, pids: list[int], port: int, path: str = "/bench", **kw) -> dict:
    before = cpu_seconds(pids) if pids else 0.0
    result = load(run, f"http://127.0.0.1:{port}{path}", **kw)
    used = cpu_seconds(pids) - before if pids else 0.0
    result["target"] = name
    result["rps"] = result["requests"] / result["seconds"] if result["seconds"] else 0.0
    result["cpu_us_per_request"] = (
        used * 1e6 / result["requests"] if pids and result["requests"] else None
    )
    result["peak_rss_kib"] = rss_kib(pids, "VmHWM") if pids else None
    return result


def proxies(run: Run, upstream_port: int, with_nginx: bool = True, yardstick: bool = False) -> list:
    """fastgw, nginx when installed, and with --minimal the yardstick where asked."""
    started = [FastGW(run.workdir, upstream_port, cpu=run.proxy_cpu)]
    if with_nginx and nginx_available():
        started.append(Nginx(run.workdir, upstream_port, cpu=run.proxy_cpu))
    elif with_nginx:
        run.note("nginx not installed: no reference column")
    if yardstick and run.minimal:
        started.append(Minimal(run.workdir, upstream_port, cpu=run.proxy_cpu))
    return started


def interleaved(
    run: Run, targets: list[tuple[str, list[int], int]], reps: int, **kw
) -> list[list[dict]]:
    """Each repetition runs every target once, in turn; a short warm-up run comes first."""
    for _name, _pids, port in targets:
        load(run, f"http://127.0.0.1:{port}/bench", **dict(kw, duration=min(1.0, kw["duration"])))
    rounds = []
    for rep in range(reps):
        rounds.append([measure(run, name, pids, port, **kw) for name, pids, port in targets])
        print(
            f"  rep {rep + 1}/{reps}: "
            + ", ".join(f"{r['target']} {r['rps']:.0f} req/s" for r in rounds[-1]),
            flush=True,
        )
    return rounds


def summarise(
    rounds: list[list[dict]], baseline: str | None = "direct", reference: str | None = "nginx"
) -> dict:
    """Medians per target, and ratios paired within each repetition."""
    names = [r["target"] for r in rounds[0]]
    summary: dict[str, dict] = {}
    for i, name in enumerate(names):
        rows = [rnd[i] for rnd in rounds]
        entry = {
            key: statistics.median(r[key] for r in rows)
            for key in ("rps", "p50", "p90", "p99", "p999")
        }
        cpu = [r["cpu_us_per_request"] for r in rows if r["cpu_us_per_request"] is not None]
        entry["cpu_us_per_request"] = statistics.median(cpu) if cpu else None
        rss = [r["peak_rss_kib"] for r in rows if r["peak_rss_kib"] is not None]
        entry["peak_rss_kib"] = max(rss) if rss else None
        entry["errors"] = sum(r["errors"] for r in rows)
        entry["requests"] = sum(r["requests"] for r in rows)
        entry["tool"] = rows[0]["tool"]
        for other, key in ((baseline, "vs_direct"), (reference, "vs_nginx")):
            if other in names and other != name:
                j = names.index(other)
                paired = [rnd[i]["rps"] / rnd[j]["rps"] for rnd in rounds if rnd[j]["rps"]]
                entry[key] = statistics.median(paired) if paired else None
                entry[key + "_each"] = paired
        summary[name] = entry
    return summary


def print_table(title: str, summary: dict) -> None:
    print(f"\n{title}")
    header = f"{'target':<14}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'CPU us/req':>12}{'peak RSS':>11}{'vs direct':>11}{'vs nginx':>10}"
    print(header)
    for name, e in summary.items():
        cpu = f"{e['cpu_us_per_request']:.1f}" if e.get("cpu_us_per_request") is not None else "-"
        rss = f"{e['peak_rss_kib'] / 1024:.1f}M" if e.get("peak_rss_kib") is not None else "-"
        vd = f"{e['vs_direct']:.2f}x" if e.get("vs_direct") is not None else "-"
        vn = f"{e['vs_nginx']:.2f}x" if e.get("vs_nginx") is not None else "-"
        print(
            f"{name:<14}{e['rps']:>10.0f}{e['p50'] / 1000:>9.2f}{e['p90'] / 1000:>9.2f}{e['p99'] / 1000:>9.2f}{e['p999'] / 1000:>10.2f}{cpu:>12}{rss:>11}{vd:>11}{vn:>10}"
        )


def throughput(
    run: Run, name: str, size: str, connections: int = 64, method: str = "GET", body_size: int = 0
) -> dict:
    upstream = BenchUpstream(run.workdir, size, cpu=run.load_cpu)
    started = proxies(run, upstream.port, yardstick=True)
    try:
        targets = [("direct", [], upstream.port)] + [(p.name, p.pids(), p.port) for p in started]
        rounds = interleaved(
            run,
            targets,
            run.reps or 3,
            connections=connections,
            duration=run.duration,
            method=method,
            body_size=body_size,
        )
    finally:
        for service in (*started, upstream):
            service.stop()
    summary = summarise(rounds)
    print_table(
        f"{name}: {method} {size}-byte response, {connections} keep-alive connections", summary
    )
    return {"summary": summary, "rounds": rounds}


def scenario_small(run: Run) -> dict:
    return throughput(run, "small", "12")


def scenario_large(run: Run) -> dict:
    run.note(NGINX_BUFFERS)
    return throughput(run, "large", "64KiB")


def scenario_upload(run: Run) -> dict:
    return throughput(run, "upload", "12", method="POST", body_size=4096)


def compare(
    run: Run,
    title: str,
    setups: list[tuple[str, FastGW]],
    stop: list,
    reps: int = 3,
    headers: tuple[tuple[str, str], ...] = (),
) -> dict:
    """fastgw set-ups against the same upstream, interleaved; each relative to the first."""
    try:
        targets = [(name, gw.pids(), gw.port) for name, gw in setups]
        rounds = interleaved(
            run,
            targets,
            run.reps or reps,
            connections=64,
            duration=run.duration,
            headers=headers,
        )
    finally:
        for service in stop:
            service.stop()
    summary = summarise(rounds, baseline=setups[0][0], reference=None)
    print_table(title, summary)
    return {"summary": summary, "rounds": rounds}


def scenario_routes10k(run: Run) -> dict:
    upstream = BenchUpstream(run.workdir, "12", cpu=run.load_cpu)
    few = FastGW(run.workdir, upstream.port, routes=10, cpu=run.proxy_cpu)
    many = FastGW(run.workdir, upstream.port, routes=10_000, cpu=run.proxy_cpu)
    return compare(
        run,
        "routes10k: small with 10 and with 10,000 routes (vs direct = vs 10 routes)",
        [("fastgw-10", few), ("fastgw-10k", many)],
        [few, many, upstream],
        reps=5,  # single repetitions scatter by more than the 5 % this scenario checks
    )


def scenario_workers(run: Run) -> dict:
    upstream = BenchUpstream(run.workdir, "12")
    one = FastGW(run.workdir, upstream.port, workers=1)
    two = FastGW(run.workdir, upstream.port, workers=2)
    cores = len(os.sched_getaffinity(0))
    run.note(
        f"workers: unpinned on {cores} core(s); wrk and the upstream share them, "
        "so 2 workers can reach 1.8x only with >= 4 cores"
    )
    return compare(
        run,
        "workers: small with workers: 1 and workers: 2 (vs direct = vs 1 worker)",
        [("workers-1", one), ("workers-2", two)],
        [one, two, upstream],
    )


def scenario_latency(run: Run) -> dict:
    rate, seconds = (200, 2.0) if run.smoke else (2000, 10.0)
    upstream = BenchUpstream(run.workdir, "12", cpu=run.load_cpu)
    started = proxies(run, upstream.port, yardstick=True)
    if redis_available():  # what a rate limit decided in Redis adds to latency
        redis = BenchRedis(run.workdir, cpu=run.load_cpu)
        limited = FastGW(
            run.workdir,
            upstream.port,
            cpu=run.proxy_cpu,
            extra={"plugins": NEVER_LIMITED_REDIS, **redis_section(redis)},
        )
        limited.name = "fastgw-rate-limit-redis"
        started += [limited, redis]
    try:
        targets = [("direct", [], upstream.port)] + [
            (p.name, p.pids(), p.port) for p in started if p.name != "redis"
        ]
        rounds = interleaved(
            run, targets, run.reps or 3, connections=16, duration=seconds, rps=rate
        )
    finally:
        for service in (*started, upstream):
            service.stop()
    summary = summarise(rounds)
    direct = summary["direct"]
    for entry in summary.values():
        entry["added_p50_ms"] = (entry["p50"] - direct["p50"]) / 1000
        entry["added_p99_ms"] = (entry["p99"] - direct["p99"]) / 1000
    print_table(f"latency: {rate} req/s for {seconds:.0f} s over 16 connections", summary)
    for name, entry in summary.items():
        if name != "direct":
            print(
                f"  {name}: added over direct p50 {entry['added_p50_ms']:.3f} ms, p99 {entry['added_p99_ms']:.3f} ms"
            )
    if "fastgw-rate-limit-redis" in summary:
        limited, plain = summary["fastgw-rate-limit-redis"], summary["fastgw"]
        limited["added_over_fastgw_p50_ms"] = (limited["p50"] - plain["p50"]) / 1000
        print(
            "  rate-limit redis: added over fastgw p50 "
            f"{limited['added_over_fastgw_p50_ms']:.3f} ms (target < 0.3 ms)"
        )
    return {"summary": summary, "rounds": rounds}


def transfer(port: int, size: int, upload: bool) -> float:
    """Download or upload `size` bytes through one connection; seconds taken."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        if upload:
            sock.sendall(b"POST /bench HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"u" * (1 << 20)
            left = size
            while left:
                sock.sendall(block[: min(left, len(block))])
                left -= min(left, len(block))
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += sock.recv(65536)
        else:
            sock.sendall(b"GET /bench HTTP/1.1\r\nHost: b\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            received = len(head.partition(b"\r\n\r\n")[2])
            buffer = bytearray(1 << 20)
            while received < size:
                n = sock.recv_into(buffer)
                if not n:
                    raise ConnectionError("closed early")
                received += n
    return time.perf_counter() - started


def scenario_huge(run: Run) -> dict:
    size = (8 if run.smoke else 100) << 20
    label = f"{size >> 20}MiB"
    rows = {}
    for direction, upstream_size in (("download", label), ("upload", "12")):
        upstream = BenchUpstream(run.workdir, upstream_size, cpu=run.load_cpu)
        started = proxies(run, upstream.port)
        try:
            for service in started:
                pids = service.pids()
                transfer(service.port, 1 << 20, direction == "upload")  # warm up
                before = rss_kib(pids)
                seconds = transfer(service.port, size, direction == "upload")
                peak = rss_kib(pids, "VmHWM")
                rows[f"{service.name} {direction}"] = {
                    "mib_per_s": size / seconds / (1 << 20),
                    "rss_before_kib": before,
                    "rss_growth_kib": peak - before,
                }
        finally:
            for service in (*started, upstream):
                service.stop()
    print(f"\nhuge: {label} through one connection (peak RSS growth over the transfer)")
    for name, row in rows.items():
        print(
            f"  {name:<20} {row['mib_per_s']:>8.0f} MiB/s   RSS growth {row['rss_growth_kib'] / 1024:>6.1f} MiB"
        )
    return {"summary": rows}


async def hold_idle(port: int, count: int) -> list:
    """Open `count` keep-alive connections, one request each, and keep them open."""
    writers = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /bench HTTP/1.1\r\nHost: b\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        writers.append(writer)

    for start in range(0, count, 500):
        await asyncio.gather(*(one() for _ in range(min(500, count - start))))
    return writers


def scenario_idle(run: Run) -> dict:
    count = 500 if run.smoke else 10_000
    upstream = BenchUpstream(run.workdir, "12")
    started = proxies(run, upstream.port)
    rows = {}
    try:
        for service in started:
            pids = service.pids()
            before = rss_kib(pids)

            async def measure_idle(port: int = service.port, pids: list[int] = pids) -> int:
                writers = await hold_idle(port, count)
                after = rss_kib(pids)
                for writer in writers:
                    writer.close()
                return after

            after = asyncio.run(measure_idle())
            rows[service.name] = {
                "connections": count,
                "rss_per_connection_kib": (after - before) / count,
            }
    finally:
        for service in (*started, upstream):
            service.stop()
    print(f"\nidle: {count} idle keep-alive connections")
    for name, row in rows.items():
        print(f"  {name:<8} {row['rss_per_connection_kib']:.1f} KiB of RSS per connection")
    return {"summary": rows}


def scenario_plugins(run: Run) -> dict:
    """`small` through the plugin chains, each set-up against the same upstream and requests.

    Every request carries an API key and an RS256 JWT, so all set-ups see identical bytes;
    the difference in CPU per request is what a plugin costs. A rate limit high enough never
    to refuse runs with one worker and with two (whose shared state takes a lock), each against
    no plugins with as many workers, and with the redis backend (a local redis-server, whose own
    CPU is not counted). Later plugin issues add their set-ups here.
    """
    key, token, pem = bench_credentials(run.workdir)
    consumers = [{"name": "bench", "key_auth": {"keys": [key]}, "jwt": {"subject": "bench"}}]
    chains = {  # name: (plugins, workers)
        "no-plugins": ({}, 1),
        "key-auth": ({"key-auth": {}}, 1),
        "jwt-auth": ({"jwt-auth": {"algorithms": ["RS256"], "public_key_file": str(pem)}}, 1),
        "rate-limit": (NEVER_LIMITED, 1),
        "no-plugins-w2": ({}, 2),
        "rate-limit-w2": (NEVER_LIMITED, 2),
    }
    redis = BenchRedis(run.workdir, cpu=run.load_cpu) if redis_available() else None
    if redis is not None:
        chains["rate-limit-redis"] = (NEVER_LIMITED_REDIS, 1)
    else:
        run.note("redis-server not installed: no rate-limit-redis set-up")
    upstream = BenchUpstream(run.workdir, "12", cpu=run.load_cpu)
    setups = [
        (
            name,
            FastGW(
                run.workdir,
                upstream.port,
                workers=workers,
                cpu=run.proxy_cpu,
                extra={"consumers": consumers, "plugins": plugins, **redis_section(redis)},
            ),
        )
        for name, (plugins, workers) in chains.items()
    ]
    result = compare(
        run,
        "plugins: small with a global plugin (vs direct = vs no plugins)",
        setups,
        [gw for _, gw in setups] + [upstream] + ([redis] if redis is not None else []),
        headers=(("apikey", key), ("Authorization", f"Bearer {token}")),
    )
    summary = result["summary"]
    for name in list(chains)[1:]:
        if name.startswith("no-plugins"):
            continue
        baseline = "no-plugins-w2" if name.endswith("-w2") else "no-plugins"
        base = summary[baseline]["cpu_us_per_request"]
        cpu = summary[name]["cpu_us_per_request"]
        if base is not None and cpu is not None:
            summary[name]["cost_us_per_request"] = cpu - base
            print(f"  {name}: +{cpu - base:.1f} us of CPU per request over {baseline}")
        if summary[name]["errors"]:
            print(f"  {name}: {summary[name]['errors']} request(s) failed: check the credentials")
    return result


# A rate limit high enough never to refuse, keyed by client address: what a limit costs.
NEVER_LIMITED = {"rate-limit": {"limits": [{"rate": 1_000_000_000, "per": "1s"}], "key": "ip"}}
NEVER_LIMITED_REDIS = {"rate-limit": {**NEVER_LIMITED["rate-limit"], "backend": "redis"}}


def redis_section(redis: BenchRedis | None) -> dict:
    """The top-level `redis:` of a set-up, when a bench redis-server runs."""
    return {"redis": {"url": redis.url, "timeout": "50ms"}} if redis is not None else {}


def scenario_balancers(run: Run) -> dict:
    """`small` through an upstream of three targets (three bench upstreams) under each balancer;
    CPU per request relative to round_robin is what a balancer costs."""
    upstreams = [BenchUpstream(run.workdir, "12", cpu=run.load_cpu) for _ in range(3)]
    targets = [{"url": f"http://127.0.0.1:{u.port}"} for u in upstreams]
    kinds = {
        "round_robin": {},
        "least_conn": {},
        "consistent_hash": {"hash_on": "ip"},
        "ewma": {},
    }
    setups = []
    for kind, extra in kinds.items():
        upstream = {"targets": targets, "pool": {"max_idle": 256}, "balancer": kind, **extra}
        gw = FastGW(
            run.workdir, upstreams[0].port, cpu=run.proxy_cpu, extra={"upstreams": {"up": upstream}}
        )
        setups.append((kind, gw))
    result = compare(
        run,
        "balancers: small through 3 targets (vs direct = vs round_robin)",
        setups,
        [gw for _, gw in setups] + upstreams,
    )
    summary = result["summary"]
    base = summary["round_robin"]["cpu_us_per_request"]
    for kind in list(kinds)[1:]:
        cpu = summary[kind]["cpu_us_per_request"]
        if base is not None and cpu is not None:
            summary[kind]["cost_us_per_request"] = cpu - base
            print(f"  {kind}: {cpu - base:+.1f} us of CPU per request over round_robin")
    return result


def scenario_features(run: Run) -> dict:
    """`small` through one route with the features of a production set-up: key-auth and a
    local rate limit (never refusing), metrics (an admin listener), an access log to a file
    and trace propagation (no export), against the same route with nothing on, and nginx.

    `observed` (metrics + access log + tracing alone) against `nothing`, and `features`
    against `auth-limit` (the plugins alone), are what observability costs; `features`
    against nginx is the throughput the issue asks to keep above 0.5x.
    """
    key, _token, _pem = bench_credentials(run.workdir)
    consumers = [{"name": "bench", "key_auth": {"keys": [key]}}]
    plugins = {"key-auth": {}, **NEVER_LIMITED}
    upstream = BenchUpstream(run.workdir, "12", cpu=run.load_cpu)

    def observing(name: str) -> dict:
        log = run.workdir / f"access-{name}.log"
        return {"admin": f"127.0.0.1:{free_port()}", "access_log": {"path": str(log)}}

    def gateway(name: str, observed: bool, with_plugins: bool) -> FastGW:
        extra: dict = {"tracing": {}} if observed else {}
        if with_plugins:
            extra.update(consumers=consumers, plugins=plugins)
        server = observing(name) if observed else None
        return FastGW(run.workdir, upstream.port, cpu=run.proxy_cpu, extra=extra, server=server)

    setups = {
        "nothing": gateway("nothing", False, False),
        "observed": gateway("observed", True, False),
        "auth-limit": gateway("auth-limit", False, True),
        "features": gateway("features", True, True),
    }
    started: list = [*setups.values(), upstream]
    targets = [(name, gw.pids(), gw.port) for name, gw in setups.items()]
    if nginx_available():
        nginx = Nginx(run.workdir, upstream.port, cpu=run.proxy_cpu)
        started.append(nginx)
        targets.append(("nginx", nginx.pids(), nginx.port))
    else:
        run.note("nginx not installed: no reference column")
    try:
        rounds = interleaved(
            run,
            targets,
            run.reps or 3,
            connections=64,
            duration=run.duration,
            headers=(("apikey", key),),
        )
    finally:
        for service in started:
            service.stop()
    summary = summarise(rounds, baseline="nothing", reference="nginx")
    print_table("features: small through one route (vs direct = vs nothing on)", summary)
    for name, base in (("observed", "nothing"), ("features", "auth-limit")):
        cpu, before = summary[name]["cpu_us_per_request"], summary[base]["cpu_us_per_request"]
        if cpu is not None and before is not None:
            summary[name]["cost_us_per_request"] = cpu - before
            print(f"  {name}: {cpu - before:+.1f} us of CPU per request over {base}")
        if summary[name]["errors"]:
            print(f"  {name}: {summary[name]['errors']} request(s) failed")
    return {"summary": summary, "rounds": rounds}


def bench_credentials(workdir: Path) -> tuple[str, str, Path]:
    """An API key, an RS256 token valid for a day, and the PEM file of its public key."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = rsa.generate_private_key(65537, 2048)
    pem = workdir / "bench-jwt.pem"
    pem.write_bytes(
        private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    now = int(time.time())
    token = jwt.encode({"sub": "bench", "iat": now, "exp": now + 86400}, private, "RS256")
    return "bench-key-0123456789abcdef", token, pem


def machine() -> dict:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
        commit = done.stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.date.today().isoformat(),
        "commit": commit or "unknown",
        "cores": len(os.sched_getaffinity(0)),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.machine(),
        ),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenarios", nargs="+", choices=[*SCENARIOS, "all"])
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3; 5 for routes10k)")
    parser.add_argument(
        "--pin", action="store_true", help="proxy alone on CPU 0, load and upstream on CPU 1"
    )
    parser.add_argument(
        "--builtin", action="store_true", help="use the built-in generator even if wrk/h2load exist"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a quick run: short, one repetition, small sizes"
    )
    parser.add_argument(
        "--minimal",
        action="store_true",
        help="also run bench/minimal.py, a feature-less uvloop + httptools proxy (the yardstick)",
    )
    args = parser.parse_args(argv)
    names = SCENARIOS if "all" in args.scenarios else args.scenarios
    cores = len(os.sched_getaffinity(0))
    pin = args.pin
    if pin and cores < 2:
        print("note: --pin needs at least 2 cores; running unpinned")
        pin = False
    with tempfile.TemporaryDirectory(prefix="fastgw-bench-") as tmp:
        run = Run(
            Path(tmp),
            1.0 if args.smoke else args.duration,
            1 if args.smoke else args.reps,
            pin,
            not args.builtin,
            args.smoke,
            args.minimal,
        )
        info = machine()
        print(
            f"fastgw bench {info['date']} commit {info['commit']} on {info['cores']} core(s) ({info['cpu']}), Python {info['python']}"
        )
        print(
            "pinned: proxy on CPU 0; load generator and upstream on CPU 1"
            if pin
            else "not pinned: all processes share the cores"
        )
        for name in names:
            print(f"\n== {name}", flush=True)
            run.results[name] = globals()[f"scenario_{name}"](run)
        if run.notes:
            print("\nnotes:\n" + "\n".join(f"- {n}" for n in run.notes))
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {"machine": info, "pinned": pin, "notes": run.notes, "results": run.results},
                    indent=1,
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
