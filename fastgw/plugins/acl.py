"""acl: only consumers in allowed groups, and none in denied groups, get through (else 403)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.fields import Errors, list_of, spec, string
from .base import Build, Phase, Plugin, Reply
from .consumers import NAME_PATTERN


@dataclass(frozen=True)
class AclConfig:
    allow_groups: tuple[str, ...] = spec(
        list_of(string(pattern=NAME_PATTERN, hint="a group name")), ()
    )
    deny_groups: tuple[str, ...] = spec(
        list_of(string(pattern=NAME_PATTERN, hint="a group name")), ()
    )


class Acl(Plugin):
    name = "acl"
    phase = Phase.AUTHORIZATION
    Config = AclConfig

    @classmethod
    def check(cls, config: AclConfig, path: str, errors: Errors) -> None:
        if not config.allow_groups and not config.deny_groups:
            errors.add(path, "expected allow_groups or deny_groups (or both)")

    def __init__(self, config: AclConfig, build: Build) -> None:
        super().__init__(config, build)
        self.allow = frozenset(config.allow_groups)
        self.deny = frozenset(config.deny_groups)
        self.forbidden = Reply(403, "access to this resource is not allowed")

    def on_request(self, ex) -> Reply | None:
        identity = ex.consumer
        if identity is None:
            return self.forbidden.because("acl: the request has no consumer")
        groups = identity.groups
        if self.deny and not self.deny.isdisjoint(groups):
            return self.forbidden.because(f"acl: consumer '{identity.name}' is in a denied group")
        if self.allow and self.allow.isdisjoint(groups):
            return self.forbidden.because(f"acl: consumer '{identity.name}' is in no allowed group")
        return None
