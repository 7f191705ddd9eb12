"""ip-restriction: allow or deny by the client's address (v4 and v6 CIDRs); 403 otherwise.

The client address is the socket peer, or behind `server.trusted_proxies` the right-most
X-Forwarded-For address that is not a trusted proxy. A deny entry wins over an allow entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.fields import Errors, list_of, spec
from ..http.addresses import Network, Networks, network
from .base import Build, Phase, Plugin, Reply


@dataclass(frozen=True)
class IpRestrictionConfig:
    allow: tuple[Network, ...] = spec(list_of(network), ())
    deny: tuple[Network, ...] = spec(list_of(network), ())


class IpRestriction(Plugin):
    name = "ip-restriction"
    phase = Phase.IP_RULES
    Config = IpRestrictionConfig

    @classmethod
    def check(cls, config: IpRestrictionConfig, path: str, errors: Errors) -> None:
        if not config.allow and not config.deny:
            errors.add(path, "expected allow or deny networks (or both)")

    def __init__(self, config: IpRestrictionConfig, build: Build) -> None:
        super().__init__(config, build)
        self.allow = Networks(config.allow) if config.allow else None
        self.deny = Networks(config.deny) if config.deny else None
        self.forbidden = Reply(403, "access from this address is not allowed")

    def on_request(self, ex) -> Reply | None:
        address = ex.client_address()
        if address is None:
            return self.forbidden.because("ip-restriction: the client address is unknown")
        if self.deny is not None and address in self.deny:
            return self.forbidden.because(f"ip-restriction: {address} is denied")
        if self.allow is not None and address not in self.allow:
            return self.forbidden.because(f"ip-restriction: {address} is not allowed")
        return None
