"""TLS: listener settings (certificates chosen by SNI, client certificates) and upstream TLS.

A TLS listener's socket keeps one SSLContext for its life; its SNI callback, which OpenSSL
calls on every ClientHello (with or without a server name), switches each handshake to the
context of the live config. So a reload (SIGHUP) swaps certificates, CA and client-auth
settings without touching the listening socket.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

from .config.fields import Errors, list_of, one_of, optional, record, spec, string

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

_file = string(hint="a file name")


@dataclass(frozen=True)
class CertificatePair:
    cert: str = spec(_file)
    key: str = spec(_file)


@dataclass(frozen=True)
class ListenerTls:
    cert: str | None = spec(optional(_file), None)
    key: str | None = spec(optional(_file), None)
    certificates: tuple[CertificatePair, ...] = spec(list_of(record(CertificatePair)), ())
    client_ca: str | None = spec(optional(_file), None)
    client_auth: str | None = spec(optional(one_of("none", "optional", "required")), None)
    min_version: str = spec(one_of("1.2", "1.3"), "1.2")

    def pairs(self) -> list[CertificatePair]:
        """Every certificate, the default one first."""
        first = [CertificatePair(self.cert, self.key)] if self.cert and self.key else []
        return first + list(self.certificates)

    def verify_mode(self) -> int:
        if self.client_auth is None:
            return ssl.CERT_REQUIRED if self.client_ca else ssl.CERT_NONE
        return CLIENT_AUTH[self.client_auth]


def check_listener_tls(tls: ListenerTls, path: str, errors: Errors) -> None:
    """Everything that can be wrong with the files and their combination, at load."""
    if (tls.cert is None) != (tls.key is None):
        errors.add(path, "expected cert and key together")
    if not tls.pairs():
        errors.add(path, "expected a certificate: cert and key, or certificates")
    for where, pair in _labelled_pairs(tls, path):
        problem = file_problem(pair.cert, "cert", CERTIFICATE) or file_problem(
            pair.key, "key", PRIVATE_KEY
        )
        if problem is None and tls.client_ca is not None:
            problem = file_problem(tls.client_ca, "client_ca", CERTIFICATE)
        if problem is not None:
            errors.add(where, problem)
            continue
        try:
            server_context(pair, tls)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                errors.add(where, f"the key '{pair.key}' does not match the cert '{pair.cert}'")
            else:
                errors.add(where, f"cannot use cert '{pair.cert}' with key '{pair.key}': {exc}")
        except (OSError, ValueError) as exc:
            errors.add(where, f"cannot use cert '{pair.cert}' with key '{pair.key}': {exc}")
    if tls.client_auth in ("optional", "required") and tls.client_ca is None:
        errors.add(
            f"{path}.client_auth", "expected client_ca: the CAs client certificates must chain to"
        )


CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
PRIVATE_KEY = b"PRIVATE KEY-----"


def file_problem(name: str, role: str, marker: bytes) -> str | None:
    """Why a PEM file cannot serve as `role`: missing, unreadable, or not PEM; None if fine."""
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return f"{role} file '{name}' does not exist"
    except PermissionError:
        return f"{role} file '{name}' is not readable by this user (uid {os.getuid()})"
    except OSError as exc:
        return f"{role} file '{name}' cannot be read: {exc.strerror}"
    if marker not in data:
        what = "certificate" if marker == CERTIFICATE else "private key"
        return f"{role} file '{name}' holds no PEM {what} (expected a '{marker.decode()}' block)"
    return None


def _labelled_pairs(tls: ListenerTls, path: str) -> list[tuple[str, CertificatePair]]:
    labelled = [(path, CertificatePair(tls.cert, tls.key))] if tls.cert and tls.key else []
    return labelled + [(f"{path}.certificates[{i}]", p) for i, p in enumerate(tls.certificates)]


def server_context(pair: CertificatePair, tls: ListenerTls) -> ssl.SSLContext:
    """A server context: TLS 1.2+ with Python's modern default ciphers, HTTP/1.1 by ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(pair.cert, pair.key)
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=tls.client_ca)
    context.verify_mode = tls.verify_mode()
    return context


def certificate_names(cert_file: str) -> list[str]:
    """DNS names a certificate answers for (SANs, else its CN), lower-cased."""
    from cryptography import x509  # on first use: ~10 MiB that configs without TLS do not pay

    with open(cert_file, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        found = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return [str(name).lower() for name in found]


class ServerTls:
    """The contexts of one listener for one config, and the choice among them by SNI."""

    def __init__(self, tls: ListenerTls) -> None:
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}
        self.default: ssl.SSLContext | None = None
        for pair in tls.pairs():
            context = server_context(pair, tls)
            if self.default is None:
                self.default = context
            for name in certificate_names(pair.cert):
                table = self.wildcard if name.startswith("*.") else self.exact
                table.setdefault(name.removeprefix("*."), context)

    def choose(self, server_name: str | None) -> ssl.SSLContext:
        if server_name:
            name = server_name.lower()
            found = self.exact.get(name)
            if found is None:
                found = self.wildcard.get(name.partition(".")[2])
            if found is not None:
                return found
        return self.default


class TlsListener:
    """What the listening socket holds: a fixed context whose SNI callback follows `current`."""

    def __init__(self, tls: ListenerTls) -> None:
        self.current = ServerTls(tls)
        self.context = self.current.default  # where every handshake starts
        self.context.sni_callback = self._select

    def _select(self, ssl_object: Any, server_name: str | None, _context: Any) -> None:
        ssl_object.context = self.current.choose(server_name)


def peer_subjects(ssl_object: Any) -> tuple[str, ...] | None:
    """A verified client certificate's subject as RFC 4514 (`CN=alice,O=Acme`), then its
    common name alone (`CN=alice`): the forms `consumers[].mtls.subject` may take."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509

    subject = x509.load_der_x509_certificate(der).subject
    names = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    full = subject.rfc4514_string()
    return (full, f"CN={names[0].value}") if names else (full,)


def client_context(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """For https upstreams and the gateway's own calls: verification on unless switched off."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
