"""RequestView: the request as plugins see and change it (a base of Exchange).

Plugins read watched headers, query parameters and the client's address, set the identity of
an authenticated caller, and drop headers before the request goes upstream. Nothing here runs
on the path of a route without plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from ..plugins.base import UNSAFE
from .addresses import Address, real_client
from .headers import drop_named

if TYPE_CHECKING:
    from ..plugins.consumers import Identity

UNSET: Any = object()


class RequestView:
    """Fields are declared by Exchange; this class only holds the methods."""

    __slots__ = ()

    # Declared for type checkers; the slots live on Exchange.
    if TYPE_CHECKING:
        special: list[tuple[int, bytes, bytes]]
        fwd: list[bytes]
        query: bytes | None
        address: Any
        xff: bytes | None
        runtime: Any
        client: Any
        consumer: Identity | None
        subject: bytes | None
        scopes: bytes | None
        added: bytes | None
        host: bytes | None

    def header(self, kind: int) -> bytes | None:
        """The first value of a header a plugin watches (`Build.watch` gave the kind)."""
        for field_kind, _, value in self.special:
            if field_kind == kind:
                return value
        return None

    def header_values(self, kind: int) -> list[bytes]:
        return [value for field_kind, _, value in self.special if field_kind == kind]

    def remove_header(self, lower_name: bytes) -> None:
        """Do not forward this header upstream (e.g. a credential)."""
        self.fwd = drop_named(self.fwd, {lower_name})

    def query_param(self, name: bytes) -> bytes | None:
        """The first value of a query parameter, percent-decoded."""
        if self.query is None:
            return None
        for pair in self.query.split(b"&"):
            key, _sep, value = pair.partition(b"=")
            if key == name:
                return unquote_to_bytes(value.replace(b"+", b" "))
        return None

    def client_address(self) -> Address | None:
        """The client's address: the peer, or behind trusted proxies the forwarded one."""
        if self.address is UNSET:
            self.address = real_client(self.client.address(), self.xff, self.runtime.trusted)
        return self.address

    def authenticated(
        self, identity: Identity | None, subject: bytes | None = None, scopes: bytes | None = None
    ) -> None:
        """An authentication plugin identified the caller (the first one to do so wins)."""
        if self.consumer is None and self.subject is None:
            self.consumer = identity
            self.subject = subject
            self.scopes = scopes

    def add_response_fields(self, lines: bytes) -> None:
        """Header lines (each `Name: value\\r\\n`) for the response, whichever it is: the
        upstream's or the gateway's own. For a plugin with `adds_fields = True`."""
        self.added = lines if self.added is None else self.added + lines

    def certified(self, subjects: tuple[str, ...]) -> None:
        """A verified client certificate (mTLS) authenticates the request."""
        by_subject = self.runtime.consumers.by_mtls_subject
        identity = next((by_subject[s] for s in subjects if s in by_subject), None)
        subject = subjects[0].encode()
        self.authenticated(identity, subject if UNSAFE.isdisjoint(subject) else None)

    def add_identity(self) -> None:
        """The identity headers of an authenticated request (a client's own were dropped)."""
        if self.consumer is not None:
            self.fwd += self.consumer.head
        if self.subject is not None:
            self.fwd += (b"X-Auth-Subject", b": ", self.subject, b"\r\n")
        if self.scopes is not None:
            self.fwd += (b"X-Auth-Scopes", b": ", self.scopes, b"\r\n")

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """The request's fields as (name, value) pairs, rebuilt for header-matching routes."""
        fwd = self.fwd
        pairs = [(fwd[i], fwd[i + 2]) for i in range(0, len(fwd), 4)]
        if self.host is not None:
            pairs.append((b"Host", self.host))
        return pairs + [(name, value) for _, name, value in self.special]
