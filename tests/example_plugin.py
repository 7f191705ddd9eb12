"""audit-log: one line per finished exchange in a file. The example plugin of docs/plugins.md."""

from __future__ import annotations

from dataclasses import dataclass

from fastgw.config.fields import list_of, spec, string
from fastgw.plugins.base import Build, Phase, Plugin, Reply
from fastgw.plugins.registry import register


@dataclass(frozen=True)
class AuditLogConfig:
    path: str = spec(string(hint="a file to append to"))
    block_methods: tuple[str, ...] = spec(list_of(string(hint="an HTTP method")), ())


@register
class AuditLog(Plugin):
    name = "audit-log"
    phase = Phase.AUTHORIZATION
    Config = AuditLogConfig

    def __init__(self, config: AuditLogConfig, build: Build) -> None:
        super().__init__(config, build)
        self.file = open(config.path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self.blocked = frozenset(m.encode() for m in config.block_methods)
        self.refused = Reply(405, "method blocked by audit-log")  # built once, shared

    def on_request(self, ex) -> Reply | None:
        if ex.method in self.blocked:
            return self.refused.because(f"audit-log: {ex.method.decode()} is blocked")
        return None

    def on_response(self, ex, status: int, head: list[bytes]) -> None:
        head += (b"X-Audited", b": ", b"yes", b"\r\n")

    def on_log(self, ex) -> None:
        consumer = ex.consumer.name if ex.consumer is not None else "-"
        self.file.write(f"{ex.route.name} {ex.method.decode()} {ex.status} {consumer}\n")

    def close(self) -> None:
        self.file.close()
