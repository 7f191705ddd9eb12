"""Site: what one listener serves: its live Runtime, its scheme and its TLS, if any."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import Runtime
    from .tls import TlsListener


class Site:
    __slots__ = ("admin", "proto_line", "runtime", "tls")

    def __init__(
        self,
        runtime: Runtime,
        scheme: bytes = b"http",
        tls: TlsListener | None = None,
        admin: bool = False,
    ) -> None:
        self.runtime = runtime  # swapped by a reload
        self.admin = admin  # the admin listener: it answers probes until the drain ends
        self.proto_line = b"\r\nX-Forwarded-Proto: " + scheme + b"\r\n"
        self.tls = tls
