"""request-size-limit: the largest request body on a route, smaller or larger than the server's.

It has no hook: the limit is compiled into the route and applied at routing, before any plugin
runs: 413 at once when Content-Length says the body is too large, and as soon as a chunked body
passes it. The gateway accepts, before routing, the largest body any route allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.fields import size, spec
from .base import Build, Phase, Plugin


@dataclass(frozen=True)
class RequestSizeLimitConfig:
    max_body_bytes: int = spec(size)


class RequestSizeLimit(Plugin):
    name = "request-size-limit"
    phase = Phase.IP_RULES  # (no hook: the limit applies at routing)
    Config = RequestSizeLimitConfig

    def __init__(self, config: RequestSizeLimitConfig, build: Build) -> None:
        super().__init__(config, build)
        self.route_max_body = config.max_body_bytes
