"""Consumers: who may call the APIs, with their credentials (config) and the lookups (runtime).

Every credential lookup is one dict access: API keys by their SHA-256 digest (then compared
in constant time), basic-auth users by name, token subjects and certificate subjects by value.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from ..config.fields import INVALID, Errors, describe, join, list_of, record, spec, string
from .passwords import PasswordHash, parse_hash

NAME_PATTERN = r"[A-Za-z0-9_.@\-]+"
_NAME_HINT = "a name of letters, digits, '_', '-', '.', '@'"


def _key_digest(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, str) and len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    return errors.add(
        path, f"expected the SHA-256 of a key as 64 hex digits, got {describe(value)}"
    )


def _password_hash(value: Any, path: str, errors: Errors) -> Any:
    parsed = parse_hash(value) if isinstance(value, str) else None
    if parsed is None:
        return errors.add(
            path, "expected a hash printed by `fastgw hash-password` (scrypt$N$r$p$salt$hash)"
        )
    return parsed


_VISIBLE = r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?"


@dataclass(frozen=True)
class KeyAuthCredentials:
    keys: tuple[str, ...] = spec(
        list_of(string(pattern=_VISIBLE, hint="a key of visible ASCII characters")), ()
    )
    key_sha256: tuple[bytes, ...] = spec(list_of(_key_digest), ())


@dataclass(frozen=True)
class BasicAuthCredentials:
    password_hash: PasswordHash = spec(_password_hash)
    username: str | None = spec(string(pattern=r"[^:\s]+", hint="a user name without ':'"), None)


@dataclass(frozen=True)
class SubjectCredentials:
    subject: str = spec(string(pattern=_VISIBLE, hint="a subject of visible ASCII characters"))


@dataclass(frozen=True)
class Consumer:
    name: str = spec(string(pattern=NAME_PATTERN, hint=_NAME_HINT))
    groups: tuple[str, ...] = spec(list_of(string(pattern=NAME_PATTERN, hint=_NAME_HINT)), ())
    key_auth: KeyAuthCredentials | None = spec(record(KeyAuthCredentials), None)
    basic_auth: BasicAuthCredentials | None = spec(record(BasicAuthCredentials), None)
    jwt: SubjectCredentials | None = spec(record(SubjectCredentials), None)
    mtls: SubjectCredentials | None = spec(record(SubjectCredentials), None)
    plan: str | None = spec(string(pattern=NAME_PATTERN, hint="the name of a plan"), None)

    def key_digests(self) -> list[bytes]:
        if self.key_auth is None:
            return []
        keys = [hashlib.sha256(k.encode()).digest() for k in self.key_auth.keys]
        return keys + list(self.key_auth.key_sha256)

    @property
    def basic_username(self) -> str | None:
        if self.basic_auth is None:
            return None
        return self.basic_auth.username or self.name


_parse_consumer = record(Consumer)


def parse_consumers(raw: Any, errors: Errors, plans: Collection[str] = ()) -> tuple[Consumer, ...]:
    """Parse `consumers:` and check that no name or credential belongs to two consumers, and
    that each consumer's plan is one of `plans`."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.add("consumers", f"expected a list of consumers, got {describe(raw)}")
        return ()
    parsed = [_parse_consumer(value, join("consumers", i), errors) for i, value in enumerate(raw)]
    owners: dict[tuple[str, Any], int] = {}

    def claim(kind: str, value: Any, index: int, path: str, shown: str) -> None:
        first = owners.setdefault((kind, value), index)
        if first != index:
            errors.add(f"consumers[{index}].{path}", f"{shown} is also used by consumers[{first}]")

    for i, consumer in enumerate(parsed):
        if consumer is INVALID:
            continue
        claim("name", consumer.name, i, "name", f"name '{consumer.name}'")
        for digest in consumer.key_digests():
            claim("key", digest, i, "key_auth", "an API key")
        if consumer.basic_username is not None:
            claim("user", consumer.basic_username, i, "basic_auth", "the basic-auth user name")
        if consumer.jwt is not None:
            claim("jwt", consumer.jwt.subject, i, "jwt.subject", "the token subject")
        if consumer.mtls is not None:
            claim("mtls", consumer.mtls.subject, i, "mtls.subject", "the certificate subject")
        if consumer.plan is not None and consumer.plan not in plans:
            known = ", ".join(sorted(plans)) or "none defined"
            errors.add(f"consumers[{i}].plan", f"unknown plan '{consumer.plan}' (known: {known})")
    return tuple(c for c in parsed if c is not INVALID)


class Identity:
    """A consumer as requests see it: name, groups and its identity header fields, prebuilt
    as the `name, b": ", value, b"\r\n"` pieces of a forwarded head."""

    __slots__ = ("groups", "head", "name", "plan")

    def __init__(self, consumer: Consumer) -> None:
        self.name = consumer.name
        self.plan = consumer.plan  # the plan whose numbers `per_plan` limits and quotas use
        self.groups = frozenset(consumer.groups)
        head: tuple[bytes, ...] = (b"X-Consumer-Name", b": ", consumer.name.encode(), b"\r\n")
        if consumer.groups:
            groups = ",".join(consumer.groups).encode()
            head += (b"X-Consumer-Groups", b": ", groups, b"\r\n")
        self.head = head


class ConsumerIndex:
    """Per-runtime lookups from a presented credential to its consumer."""

    def __init__(self, consumers: tuple[Consumer, ...]) -> None:
        self.by_key: dict[bytes, tuple[bytes, Identity]] = {}
        self.by_user: dict[bytes, tuple[PasswordHash, Identity]] = {}
        self.by_jwt_subject: dict[str, Identity] = {}
        self.by_mtls_subject: dict[str, Identity] = {}
        for consumer in consumers:
            identity = Identity(consumer)
            for digest in consumer.key_digests():
                self.by_key[digest] = (digest, identity)
            if consumer.basic_auth is not None:
                user = (consumer.basic_username or consumer.name).encode()
                self.by_user[user] = (consumer.basic_auth.password_hash, identity)
            if consumer.jwt is not None:
                self.by_jwt_subject[consumer.jwt.subject] = identity
            if consumer.mtls is not None:
                self.by_mtls_subject[consumer.mtls.subject] = identity

    def by_api_key(self, key: bytes) -> Identity | None:
        """O(1) by the key's digest, then a constant-time comparison of the digests."""
        digest = hashlib.sha256(key).digest()
        found = self.by_key.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return found[1]
