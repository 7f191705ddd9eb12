"""`fastgw status`: a running gateway summed up in a few lines, from its admin API."""

from __future__ import annotations

import http.client
from typing import Any

import orjson


def fetch(address: str, path: str, token: str | None) -> Any:
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=5)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            connection.request("GET", path, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
        except ConnectionRefusedError:
            raise ValueError(f"no gateway answers at {address} (connection refused)") from None
        if answer.status == 401:
            raise ValueError(f"{address} wants the admin token (--token or $FASTGW_ADMIN_TOKEN)")
        if answer.status not in (200, 503):
            raise ValueError(f"{address}{path} answered {answer.status}")
        return orjson.loads(body)
    finally:
        connection.close()


def summary(address: str, token: str | None) -> str:
    ready = fetch(address, "/readyz", token)
    stats = fetch(address, "/stats", token)
    upstreams = fetch(address, "/upstreams", token)
    lines = [
        f"fastgw at {address}: {ready['status']}, config version {stats['config_version']} "
        f"({stats['config_digest']}), {stats['workers']} worker(s), up {uptime(stats['uptime_seconds'])}"
    ]
    for name, route in stats["routes"].items():
        minute = route["1m"]
        errors = f"{minute['error_rate'] * 100:.2f}%" if minute["error_rate"] is not None else "-"
        p99 = f"{minute['p99_ms']:.1f} ms" if minute["p99_ms"] is not None else "-"
        lines.append(
            f"  route {name}: {minute['rps']:.1f} req/s, {errors} 5xx, p99 {p99} (last minute)"
        )
    for upstream in upstreams:
        lines.append(f"  upstream {upstream['upstream']} ({upstream['balancer']}):")
        for target in upstream["targets"]:
            state = "healthy" if target["healthy"] else "DOWN"
            if target["ejected_in_workers"]:
                state += f", ejected in {target['ejected_in_workers']} worker(s)"
            if target["active_check"] == "down":
                state += ", failing active checks"
            lines.append(
                f"    {target['target']} weight {target['weight']}: {state}; "
                f"{target['in_flight']} in flight, {target['connections']} connection(s)"
            )
    return "\n".join(lines)


def uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"
