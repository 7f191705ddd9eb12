"""TLS end to end with certificates made here (trustme): termination, SNI, reload, mTLS with
consumer mapping, and https upstreams with verification."""

import json
import socket
import ssl
import sys

import h11
import pytest
import trustme

from .support import Client, Gateway, Upstream, base_config, free_port, raw_exchange, request

# A refused handshake shows up as a TLS alert, a reset, or (TLS 1.3) a close on the first read.
REFUSED = (ssl.SSLError, ConnectionError, h11.RemoteProtocolError)


class TlsClient(Client):
    """The strict h11 client over TLS."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str | None = "gw.test"):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=server_name)
        self.conn = h11.Connection(h11.CLIENT)


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


def write_pair(directory, name: str, cert: trustme.LeafCert) -> dict:
    cert.cert_chain_pems[0].write_to_path(str(directory / f"{name}.pem"))
    for extra in cert.cert_chain_pems[1:]:
        with open(directory / f"{name}.pem", "ab") as handle:
            handle.write(extra.bytes())
    cert.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    return {"cert": str(directory / f"{name}.pem"), "key": str(directory / f"{name}.key")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, rogue_ca = trustme.CA(), trustme.CA(), trustme.CA()
    client_ca.cert_pem.write_to_path(str(directory / "clients-ca.pem"))
    server_ca.cert_pem.write_to_path(str(directory / "server-ca.pem"))
    rogue_ca.cert_pem.write_to_path(str(directory / "rogue-ca.pem"))
    return {
        "dir": directory,
        "server_ca": server_ca,
        "client_ca": client_ca,
        "rogue_ca": rogue_ca,
        "default": write_pair(directory, "gw", server_ca.issue_cert("gw.test", "127.0.0.1")),
        "other": write_pair(directory, "other", server_ca.issue_cert("*.other.test")),
        "upstream": write_pair(directory, "up", server_ca.issue_cert("127.0.0.1", "localhost")),
        "alice": client_ca.issue_cert("alice@example.com", common_name="alice"),
        "mallory": client_ca.issue_cert("mallory@example.com", common_name="mallory"),
        "rogue": rogue_ca.issue_cert("alice@example.com", common_name="alice"),
    }


@pytest.fixture(scope="module")
def tls_upstream(pki):
    server = Upstream(tls=(pki["upstream"]["cert"], pki["upstream"]["key"]))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_gw(upstream, tls_upstream, pki):
    ports = [free_port() for _ in range(5)]
    client_ca = str(pki["dir"] / "clients-ca.pem")
    default = pki["default"]
    config = base_config(upstream.url)
    config["server"]["listen"] = [
        f"127.0.0.1:{ports[0]}",
        {
            "address": f"127.0.0.1:{ports[1]}",
            "tls": {**default, "certificates": [pki["other"]]},
        },
        {
            "address": f"127.0.0.1:{ports[2]}",
            "tls": {**default, "client_ca": client_ca, "client_auth": "required"},
        },
        {
            "address": f"127.0.0.1:{ports[3]}",
            "tls": {**default, "client_ca": client_ca, "client_auth": "optional"},
        },
        {"address": f"127.0.0.1:{ports[4]}", "tls": {**default, "min_version": "1.3"}},
    ]
    config["consumers"] = [{"name": "alice", "groups": ["staff"], "mtls": {"subject": "CN=alice"}}]
    https = tls_upstream.url
    config["upstreams"].update(
        {
            "verified": {"targets": [{"url": https}], "ca": str(pki["dir"] / "server-ca.pem")},
            "system": {"targets": [{"url": https}]},
            "unverified": {"targets": [{"url": https}], "tls_verify": False},
            "rogue": {"targets": [{"url": https}], "ca": str(pki["dir"] / "rogue-ca.pem")},
            "named": {
                "targets": [{"url": https.replace("127.0.0.1", "localhost")}],
                "ca": str(pki["dir"] / "server-ca.pem"),
            },
        }
    )
    config["routes"] = [
        {"name": name, "match": {"paths": [f"/{name}/*"]}, "upstream": name}
        for name in ("verified", "system", "unverified", "named", "rogue")
    ] + config["routes"]
    gw = Gateway(pki["dir"], config).start()
    gw.ports = ports
    yield gw
    gw.stop()


def headers_seen(response) -> dict:
    assert response.status == 200, response.body
    return {k.lower(): v for k, v in response.json()["headers"]}


def test_tls_termination_and_forwarded_proto(tls_gw, pki):
    with TlsClient(tls_gw.ports[1], client_context(pki["server_ca"])) as client:
        seen = headers_seen(client.request("GET", "/x"))
        assert seen["x-forwarded-proto"] == "https"
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert client.sock.selected_alpn_protocol() in (None, "http/1.1")
        assert client.request("GET", "/y").status == 200  # keep-alive over TLS
    plain = headers_seen(request(tls_gw.ports[0], "GET", "/x"))
    assert plain["x-forwarded-proto"] == "http"


def test_plain_http_to_a_tls_port_gets_400_saying_so(tls_gw, pki):
    answer = raw_exchange(tls_gw.ports[1], b"GET /x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: text/plain" in head and b"Connection: close" in head
    assert body == b"400 Bad Request: a plain HTTP request was sent to a TLS port (https)\n"
    # TLS on the same port still works.
    with TlsClient(tls_gw.ports[1], client_context(pki["server_ca"])) as client:
        assert client.request("GET", "/x").status == 200


def served_names(port: int, context: ssl.SSLContext, server_name: str | None) -> list[str]:
    with TlsClient(port, context, server_name) as client:
        cert = client.sock.getpeercert()
        assert client.request("GET", "/x").status == 200
    return [value for kind, value in cert["subjectAltName"] if kind == "DNS"]


def test_certificate_chosen_by_sni(tls_gw, pki):
    context = client_context(pki["server_ca"])
    assert served_names(tls_gw.ports[1], context, "gw.test") == ["gw.test"]
    assert served_names(tls_gw.ports[1], context, "api.other.test") == ["*.other.test"]
    context.check_hostname = False
    assert served_names(tls_gw.ports[1], context, "unknown.test") == ["gw.test"]  # the default
    assert served_names(tls_gw.ports[1], context, None) == ["gw.test"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_old_tls_versions_are_refused(tls_gw, pki):
    context = client_context(pki["server_ca"])
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with TlsClient(tls_gw.ports[1], context) as client:
        assert client.sock.version() == "TLSv1.2"
    old = client_context(pki["server_ca"])
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(REFUSED):
        TlsClient(tls_gw.ports[1], old)
    # The server's floor, seen with a client that would accept it: min_version "1.3".
    with pytest.raises(REFUSED):
        TlsClient(tls_gw.ports[4], context)  # TLS 1.2 only
    with TlsClient(tls_gw.ports[4], client_context(pki["server_ca"])) as modern:
        assert modern.sock.version() == "TLSv1.3"


def mtls_request(port: int, pki, cert_name: str | None, headers=None):
    cert = pki[cert_name] if cert_name else None
    with TlsClient(port, client_context(pki["server_ca"], cert)) as client:
        return client.request("GET", "/x", headers=headers)


def test_mtls_required_maps_the_certificate_to_a_consumer(tls_gw, pki):
    seen = headers_seen(mtls_request(tls_gw.ports[2], pki, "alice", [("X-Consumer-Name", "eve")]))
    assert seen["x-consumer-name"] == "alice"
    assert seen["x-consumer-groups"] == "staff"
    assert seen["x-auth-subject"].startswith("CN=alice,")
    unknown = headers_seen(mtls_request(tls_gw.ports[2], pki, "mallory"))
    assert unknown["x-auth-subject"].startswith("CN=mallory,")
    assert "x-consumer-name" not in unknown


@pytest.mark.parametrize("cert_name", [None, "rogue"])
def test_mtls_required_refuses_a_missing_or_untrusted_certificate(tls_gw, pki, cert_name):
    with pytest.raises(REFUSED):
        # TLS 1.3 reports the refusal on the first read, TLS 1.2 during the handshake.
        mtls_request(tls_gw.ports[2], pki, cert_name)


def test_mtls_optional(tls_gw, pki):
    anonymous = headers_seen(mtls_request(tls_gw.ports[3], pki, None, [("X-Auth-Subject", "x")]))
    assert "x-consumer-name" not in anonymous and "x-auth-subject" not in anonymous
    assert headers_seen(mtls_request(tls_gw.ports[3], pki, "alice"))["x-consumer-name"] == "alice"
    with pytest.raises(REFUSED):
        mtls_request(tls_gw.ports[3], pki, "rogue")  # a certificate offered is still verified


def test_https_upstreams_verify_and_pool(tls_gw, tls_upstream):
    with Client(tls_gw.port) as client:
        first = client.request("GET", "/verified/a").json()
        second = client.request("GET", "/verified/b").json()
    assert first["connection"] == second["connection"]  # one pooled TLS connection
    host = dict(first["headers"])["Host"]
    assert host == "gw.test"  # preserve_host; SNI and verification use the target's name
    refused = request(tls_gw.port, "GET", "/system/a")  # the test CA is not in the system store
    assert refused.status == 502
    assert request(tls_gw.port, "GET", "/unverified/a").status == 200
    named = request(tls_gw.port, "GET", "/named/a")
    assert named.status == 200 and named.json()["sni"] == "localhost"  # SNI is the target's host
    assert first["sni"] is None  # no SNI for an IP address (RFC 6066), verified against its IP SAN
    assert "certificate verify failed" in tls_gw.log() or "refused" in tls_gw.log()


def test_upstreams_on_one_https_target_keep_their_own_verification(tls_gw):
    """One upstream does not verify, another verifies against a CA that did not sign the
    target's certificate: the second fails whatever the first did, in either order."""
    for _ in range(2):
        with Client(tls_gw.port) as client:
            assert client.request("GET", "/unverified/a").status == 200
            refused = client.request("GET", "/rogue/a")
            assert refused.status == 502
            assert refused.json()["error"] == "upstream TLS handshake failed"
            assert client.request("GET", "/rogue/b").status == 502
            assert client.request("GET", "/unverified/b").status == 200


def test_certificates_reload_on_sighup(tls_gw, pki):
    context = client_context(pki["server_ca"])
    with TlsClient(tls_gw.ports[1], context) as client:
        before = client.sock.getpeercert(binary_form=True)
    write_pair(pki["dir"], "gw", pki["server_ca"].issue_cert("gw.test", "127.0.0.1"))
    config = json.loads(json.dumps(tls_gw.config))
    tls_gw.write_config(config)
    tls_gw.signal(1)
    tls_gw.wait_log("config version 2 .* live")
    with TlsClient(tls_gw.ports[1], context) as client:
        after = client.sock.getpeercert(binary_form=True)
        assert client.request("GET", "/x").status == 200
    assert after != before


def test_certificate_files_that_cannot_serve_are_named_with_the_reason(pki, tmp_path):
    from fastgw.config.loader import ConfigError, validate

    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello\n")
    good = pki["default"]
    listen = [
        {
            "address": "127.0.0.1:8441",
            "tls": {"cert": str(tmp_path / "nope.pem"), "key": good["key"]},
        },
        {"address": "127.0.0.1:8442", "tls": {"cert": str(not_pem), "key": good["key"]}},
        {"address": "127.0.0.1:8443", "tls": {"cert": good["cert"], "key": good["cert"]}},
        {"address": "127.0.0.1:8444", "tls": {"cert": good["cert"], "key": pki["other"]["key"]}},
        {"address": "127.0.0.1:8445", "tls": {"cert": str(tmp_path), "key": good["key"]}},
    ]
    settings = base_config("http://127.0.0.1:9001")
    settings["server"]["listen"] = listen
    with pytest.raises(ConfigError) as caught:
        validate(settings)
    errors = caught.value.errors
    assert f"server.listen[0].tls: cert file '{tmp_path / 'nope.pem'}' does not exist" in errors
    assert (
        f"server.listen[1].tls: cert file '{not_pem}' holds no PEM certificate "
        "(expected a '-----BEGIN CERTIFICATE-----' block)" in errors
    )
    assert any(
        e.startswith(f"server.listen[2].tls: key file '{good['cert']}' holds no PEM private key")
        for e in errors
    )
    assert (
        f"server.listen[3].tls: the key '{pki['other']['key']}' does not match the cert "
        f"'{good['cert']}'" in errors
    )
    assert any(
        e.startswith(f"server.listen[4].tls: cert file '{tmp_path}' cannot be read: Is a directory")
        for e in errors
    )


def test_an_unreadable_key_file_is_named_with_the_reason(tmp_path):
    """As another user than the key's owner (root reads everything: the check then runs as
    `nobody`, on a copy of the package it can read)."""
    import os
    import shutil
    import stat
    import subprocess
    import tempfile

    from .support import ROOT

    if os.geteuid() != 0:
        from fastgw.tls import PRIVATE_KEY, file_problem

        key = tmp_path / "locked.key"
        key.write_text("-----BEGIN PRIVATE KEY-----\n")
        key.chmod(0)
        assert file_problem(str(key), "key", PRIVATE_KEY) == (
            f"key file '{key}' is not readable by this user (uid {os.getuid()})"
        )
        return
    place = tempfile.mkdtemp(prefix="fastgw-tls-")
    try:
        os.chmod(place, 0o755)
        shutil.copytree(ROOT / "fastgw", f"{place}/fastgw")
        for directory, _, _ in os.walk(place):
            os.chmod(directory, 0o755)
        key = f"{place}/locked.key"
        with open(key, "w") as handle:
            handle.write("-----BEGIN PRIVATE KEY-----\n")
        os.chmod(key, stat.S_IRUSR | stat.S_IWUSR)  # root's alone
        script = (
            "from fastgw.tls import PRIVATE_KEY, file_problem; "
            f"print(file_problem({key!r}, 'key', PRIVATE_KEY))"
        )
        done = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                script,
            ],
            capture_output=True,
            text=True,
            cwd=place,
            env={"PYTHONPATH": place, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert (
            done.stdout.strip() == f"key file '{key}' is not readable by this user (uid 65534)"
        ), done.stderr
    finally:
        shutil.rmtree(place)
