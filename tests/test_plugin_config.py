"""Plugin and consumer configs: every mistake reported at once, with its path."""

import hashlib
import subprocess
import sys

import pytest

from fastgw.config.loader import ConfigError, validate
from fastgw.plugins.passwords import hash_password, parse_hash

from .support import ROOT

UPSTREAMS = {"up": {"targets": [{"url": "http://127.0.0.1:9001"}]}}


def errors_of(document: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate({"upstreams": UPSTREAMS, **document})
    return caught.value.errors


def route(plugins: dict, path: str = "/a/*") -> dict:
    return {"match": {"paths": [path]}, "upstream": "up", "plugins": plugins}


def test_plugin_mistakes_all_at_once(tmp_path):
    errors = errors_of(
        {
            "plugins": {"key-auth": {"header": 5}, "no-such-plugin": {}},
            "routes": [
                route({"jwt-auth": {"algorithms": ["none"], "secret": "s"}}),
                route(
                    {"jwt-auth": {"algorithms": ["HS256"], "public_key_file": "/nope.pem"}}, "/b"
                ),
                route({"jwt-auth": {"algorithms": ["RS256"], "secret": "s"}}, "/c"),
                route({"jwt-auth": {"algorithms": ["RS256"]}}, "/d"),
                route({"acl": {}, "cors": {"origins": ["https://ok.test", "bad origin"]}}, "/e"),
                route(
                    {"ip-restriction": {"allow": ["10.0.0.0/33"]}, "key-auth": {"enabled": "no"}},
                    "/f",
                ),
                route({"key-auth": {"hide_credential": True}}, "/g"),
                route({"key-auth": {"header": "X-Forwarded-For"}}, "/i"),
                route(
                    {"jwt-auth": {"secret": "s", "algorithms": ["HS256"], "token_from": ["body"]}},
                    "/h",
                ),
            ],
        }
    )
    assert sorted(errors) == sorted(
        [
            "plugins.key-auth.header: expected a header name, got 5",
            "plugins.no-such-plugin: unknown plugin 'no-such-plugin' (known: acl, basic-auth, "
            "concurrency-limit, correlation-id, cors, ip-restriction, jwt-auth, key-auth, "
            "oauth2-introspection, quota, rate-limit, request-size-limit)",
            "routes[0].plugins.jwt-auth.algorithms[0]: unsupported algorithm 'none' (supported: "
            "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)",
            "routes[1].plugins.jwt-auth.public_key_file: cannot read '/nope.pem': No such file or directory",
            "routes[2].plugins.jwt-auth.algorithms[0]: algorithm 'RS256' cannot be used with secret "
            "(a secret only verifies HS256/384/512)",
            "routes[3].plugins.jwt-auth: expected exactly one key source: jwks_url, jwks_file, "
            "public_key_file or secret",
            "routes[4].plugins.acl: expected allow_groups or deny_groups (or both)",
            "routes[4].plugins.cors.origins[1]: expected an origin such as 'https://app.example.com', "
            "'*.example.com' or '*', got 'bad origin'",
            "routes[5].plugins.ip-restriction.allow[0]: expected a network such as 10.0.0.0/8, "
            "2001:db8::/32 or 192.0.2.7, got '10.0.0.0/33'",
            "routes[5].plugins.key-auth.enabled: expected true or false, got 'no'",
            "routes[6].plugins.key-auth.hide_credential: unknown key (expected one of: header, "
            "query, hide_credentials)",
            "routes[8].plugins.jwt-auth.token_from[0]: expected 'header', 'header:NAME', "
            "'cookie:NAME' or 'query:NAME', got 'body'",
            "routes[7].plugins.key-auth.header: 'X-Forwarded-For' is handled by the gateway "
            "itself; choose another header",
        ]
    )


def test_public_key_alg_confusion_is_refused_at_load(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pem = tmp_path / "key.pem"
    pem.write_bytes(
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "bad.pem").write_text("not a key")
    errors = errors_of(
        {
            "routes": [
                route(
                    {"jwt-auth": {"algorithms": ["RS256", "HS256"], "public_key_file": str(pem)}}
                ),
                route({"jwt-auth": {"public_key_file": str(tmp_path / "bad.pem")}}, "/b"),
            ]
        }
    )
    assert errors == [
        f"routes[1].plugins.jwt-auth.public_key_file: '{tmp_path / 'bad.pem'}' holds no PEM "
        "public key or certificate",
        "routes[0].plugins.jwt-auth.algorithms[1]: algorithm 'HS256' cannot be used with "
        "public_key_file (HMAC needs a secret)",
    ]


def test_consumer_mistakes_and_shared_credentials():
    errors = errors_of(
        {
            "consumers": [
                {"name": "alice", "key_auth": {"keys": ["k1"]}, "jwt": {"subject": "a"}},
                {"name": "alice", "key_auth": {"key_sha256": [hashlib.sha256(b"k1").hexdigest()]}},
                {"name": "bob", "jwt": {"subject": "a"}},
                {"name": "eve has spaces", "groups": "admins", "mtls": {}},
                {
                    "name": "dan",
                    "key_auth": {"key_sha256": ["abc"]},
                    "basic_auth": {"password_hash": "md5$x"},
                },
            ],
            "routes": [route({})],
        }
    )
    assert sorted(errors) == sorted(
        [
            "consumers[1].name: name 'alice' is also used by consumers[0]",
            "consumers[1].key_auth: an API key is also used by consumers[0]",
            "consumers[4].basic_auth.password_hash: expected a hash printed by `fastgw "
            "hash-password` (scrypt$N$r$p$salt$hash)",
            "consumers[2].jwt.subject: the token subject is also used by consumers[0]",
            "consumers[3].name: expected a name of letters, digits, '_', '-', '.', '@', got "
            "'eve has spaces'",
            "consumers[3].groups: expected a list, got 'admins'",
            "consumers[3].mtls.subject: required key is missing",
            "consumers[4].key_auth.key_sha256[0]: expected the SHA-256 of a key as 64 hex digits, "
            "got 'abc'",
        ]
    )


def test_route_entry_overrides_or_switches_off_a_global_one():
    config = validate(
        {
            "upstreams": UPSTREAMS,
            "plugins": {"key-auth": {"header": "X-Key"}, "correlation-id": {}},
            "routes": [
                route({"key-auth": {"enabled": False}}),
                route({"key-auth": {"query": None}}, "/b"),
                route({"correlation-id": {"enabled": True}}, "/c"),
            ],
        }
    )
    from fastgw.plugins.config import effective

    first, second, third = (
        {e.name: e for e in effective(config.plugins, r.plugins)} for r in config.routes
    )
    assert set(first) == {"correlation-id"}
    assert second["key-auth"].config.header == "apikey" and second["key-auth"].config.query is None
    assert third["key-auth"].config.header == "X-Key"


def test_hash_password_command_prints_a_usable_hash():
    result = subprocess.run(
        [sys.executable, "-m", "fastgw", "hash-password"],
        input="s3cret pass\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=True,
    )
    printed = result.stdout.strip()
    parsed = parse_hash(printed)
    assert parsed is not None and printed.startswith("scrypt$16384$8$1$")
    assert parsed.matches(b"s3cret pass") and not parsed.matches(b"s3cret pas")
    assert parse_hash(hash_password("x")).matches(b"x")
