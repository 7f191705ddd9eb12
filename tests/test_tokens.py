"""jwt-auth and oauth2-introspection end to end: real keys generated here, tokens signed here,
a real JWKS server and a real introspection endpoint (tests/servers/issuer.py)."""

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from .support import ROOT, Gateway, base_config, free_port, in_parallel, request, wait_for

ISSUER = "https://idp.test"
SECRET = "a-shared-secret-of-at-least-32-bytes!"


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(65537, 2048)
        self.rsa2 = rsa.generate_private_key(65537, 2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()

    def jwk(self, key, kid: str, codec) -> dict:
        return {**codec.to_jwk(key.public_key(), as_dict=True), "kid": kid}

    def jwks(self, rotated: bool = False) -> dict:
        keys = [self.jwk(self.ec, "e1", ECAlgorithm), self.jwk(self.ed, "d1", OKPAlgorithm)]
        keys.append(
            self.jwk(self.rsa2 if rotated else self.rsa, "r2" if rotated else "r1", RSAAlgorithm)
        )
        return {"keys": keys}

    def rsa_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def claims(**extra) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": "api", "sub": "alice", "iat": now, "exp": now + 300, **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged(header: dict, payload: dict, key: bytes | None) -> str:
    """A token built by hand (pyjwt refuses to make these): alg none, or HMAC with a PEM."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{b64(signature)}"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    directory = tmp_path_factory.mktemp("idp")
    keys = Keys()
    (directory / "jwks.json").write_text(json.dumps(keys.jwks()))
    (directory / "tokens.json").write_text("{}")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "servers" / "issuer.py"), str(directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(proc.stdout.readline())
    yield {"port": port, "dir": directory, "keys": keys, "url": f"http://127.0.0.1:{port}"}
    proc.terminate()
    proc.wait(5)


def hits(idp, path: str = "/jwks.json") -> int:
    return request(idp["port"], "GET", "/hits").json().get(path, 0)


@pytest.fixture(scope="module")
def jwt_gw(upstream, idp, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jwt")
    keys = idp["keys"]
    (tmp / "rsa.pem").write_bytes(keys.rsa_pem())
    (tmp / "jwks.json").write_text(json.dumps(keys.jwks()))
    jwks_url = f"{idp['url']}/jwks.json"
    common = {"issuer": ISSUER, "audience": "api", "jwks_url": jwks_url, "jwks_min_refresh": "1s"}
    common["algorithms"] = ["RS256", "PS256", "ES256", "EdDSA"]
    config = base_config(upstream.url)
    config["consumers"] = [{"name": "alice", "groups": ["admins"], "jwt": {"subject": "alice"}}]
    plugins = {
        "jwks": {"jwt-auth": {**common, "leeway": "0s"}},
        "scoped": {
            "jwt-auth": {
                **common,
                "required_scopes": ["read", "write"],
                "required_claims": {"tenant": "acme"},
            }
        },
        "strict": {"jwt-auth": {**common, "require_consumer": True}},
        "admins": {"jwt-auth": common, "acl": {"allow_groups": ["admins"]}},
        "hs": {"jwt-auth": {"algorithms": ["HS256"], "secret": SECRET}},
        "pem": {
            "jwt-auth": {
                "public_key_file": str(tmp / "rsa.pem"),
                "token_from": ["header", "cookie:session", "query:access_token"],
            }
        },
        "file": {
            "jwt-auth": {"algorithms": ["ES256", "EdDSA"], "jwks_file": str(tmp / "jwks.json")}
        },
        "scheduled": {
            "jwt-auth": {**common, "jwks_url": f"{jwks_url}?scheduled", "jwks_refresh": "1s"}
        },
        "unreachable": {
            "jwt-auth": {**common, "jwks_url": f"http://127.0.0.1:{free_port()}/jwks.json"}
        },
    }
    config["routes"] = [
        {"name": name, "match": {"paths": [f"/{name}/*"]}, "upstream": "up", "plugins": p}
        for name, p in plugins.items()
    ]
    gw = Gateway(tmp, config).start()
    yield gw
    gw.stop()


def get(gw, path: str, token: str | None = None, headers=None):
    return request(gw.port, "GET", path, headers=(bearer(token) if token else []) + (headers or []))


def forwarded(response) -> dict:
    assert response.status == 200, response.body
    return {k.lower(): v for k, v in response.json()["headers"]}


def test_valid_tokens_of_each_key_type_pass_with_identity_headers(jwt_gw, idp):
    keys = idp["keys"]
    for key, alg, kid in (
        (keys.rsa, "RS256", "r1"),
        (keys.rsa, "PS256", "r1"),
        (keys.ec, "ES256", "e1"),
        (keys.ed, "EdDSA", "d1"),
    ):
        token = jwt.encode(claims(scope="read write"), key, algorithm=alg, headers={"kid": kid})
        headers = forwarded(get(jwt_gw, "/jwks/x", token))
        assert headers["x-consumer-name"] == "alice", alg
        assert headers["x-consumer-groups"] == "admins"
        assert headers["x-auth-subject"] == "alice"
        assert headers["x-auth-scopes"] == "read write"


def test_a_subject_that_is_no_consumer(jwt_gw, idp):
    token = jwt.encode(claims(sub="bob", scp=["a", "b"]), idp["keys"].ec, "ES256", {"kid": "e1"})
    headers = forwarded(get(jwt_gw, "/jwks/x", token))
    assert headers["x-auth-subject"] == "bob" and headers["x-auth-scopes"] == "a b"
    assert "x-consumer-name" not in headers
    assert get(jwt_gw, "/strict/x", token).status == 401
    assert get(jwt_gw, "/admins/x", token).status == 403  # valid token, but no consumer group
    alice = jwt.encode(claims(), idp["keys"].ec, "ES256", {"kid": "e1"})
    assert get(jwt_gw, "/strict/x", alice).status == 200
    assert get(jwt_gw, "/admins/x", alice).status == 200


def rs256(idp, **extra) -> str:
    return jwt.encode(claims(**extra), idp["keys"].rsa, "RS256", {"kid": "r1"})


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "ExpiredSignatureError"),
        ("not yet valid", "ImmatureSignatureError"),
        ("wrong issuer", "InvalidIssuerError"),
        ("wrong audience", "InvalidAudienceError"),
        ("no exp", "MissingRequiredClaimError"),
        ("alg none", "algorithm 'none' is not allowed"),
        ("alg confusion", "algorithm 'HS256' is not allowed"),
        ("tampered", "InvalidSignatureError"),
        ("garbage", "malformed token"),
        ("control characters", "control characters"),
    ],
)
def test_each_bad_token_is_401(jwt_gw, idp, case, reason):
    now = int(time.time())
    token = {
        "expired": lambda: rs256(idp, exp=now - 60),
        "not yet valid": lambda: rs256(idp, nbf=now + 600),
        "wrong issuer": lambda: rs256(idp, iss="https://evil.test"),
        "wrong audience": lambda: rs256(idp, aud="other"),
        "no exp": lambda: jwt.encode(
            {k: v for k, v in claims().items() if k != "exp"},
            idp["keys"].rsa,
            "RS256",
            {"kid": "r1"},
        ),
        "alg none": lambda: forged({"alg": "none", "kid": "r1"}, claims(), None),
        "alg confusion": lambda: forged(
            {"alg": "HS256", "kid": "r1"}, claims(), idp["keys"].rsa_pem()
        ),
        "tampered": lambda: tamper(rs256(idp)),
        "garbage": lambda: "not.a.token",
        "control characters": lambda: rs256(idp, sub="alice\r\nX-Injected: 1"),
    }[case]()
    response = get(jwt_gw, "/jwks/x", token)
    assert response.status == 401
    assert response.header("www-authenticate").startswith('Bearer realm="fastgw"')
    assert response.json()["error"] == "invalid token"
    jwt_gw.wait_log(reason)


def tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["sub"] = "admin"
    return f"{header}.{b64(json.dumps(body).encode())}.{signature}"


def test_alg_confusion_against_a_pem_key_and_a_secret_route(jwt_gw, idp):
    confused = forged({"alg": "HS256"}, claims(), idp["keys"].rsa_pem())
    assert get(jwt_gw, "/pem/x", confused).status == 401
    # An RS256 token on the HMAC-only route is refused by the allow-list too.
    assert get(jwt_gw, "/hs/x", rs256(idp)).status == 401
    good = jwt.encode(claims(), SECRET, "HS256")
    assert forwarded(get(jwt_gw, "/hs/x", good))["x-auth-subject"] == "alice"


def test_missing_token_and_missing_scope_or_claim(jwt_gw, idp):
    missing = get(jwt_gw, "/jwks/x")
    assert missing.status == 401 and missing.header("www-authenticate") == 'Bearer realm="fastgw"'
    assert get(jwt_gw, "/jwks/x", headers=[("Authorization", "Basic abc")]).status == 401
    ok = rs256(idp, scope="read write extra", tenant="acme")
    assert get(jwt_gw, "/scoped/x", ok).status == 200
    for bad in (
        rs256(idp, scope="read", tenant="acme"),
        rs256(idp, scope="read write", tenant="other"),
    ):
        response = get(jwt_gw, "/scoped/x", bad)
        assert response.status == 403
        assert response.json()["error"] == "insufficient scope or claims"
    jwt_gw.wait_log(r"missing scope\(s\) \['write'\]")


def test_token_from_cookie_and_query(jwt_gw, idp):
    token = rs256(idp)
    by_cookie = get(jwt_gw, "/pem/x", headers=[("Cookie", f"a=1; session={token}; b=2")])
    assert forwarded(by_cookie)["x-auth-subject"] == "alice"
    by_query = get(jwt_gw, f"/pem/x?access_token={token}")
    assert forwarded(by_query)["x-auth-subject"] == "alice"
    assert get(jwt_gw, "/pem/x", headers=[("Cookie", "other=1")]).status == 401


def test_jwks_file(jwt_gw, idp):
    token = jwt.encode(claims(), idp["keys"].ed, "EdDSA", {"kid": "d1"})
    assert get(jwt_gw, "/file/x", token).status == 200
    unknown = jwt.encode(claims(), idp["keys"].ed, "EdDSA", {"kid": "zz"})
    assert get(jwt_gw, "/file/x", unknown).status == 401


def test_a_remembered_token_still_expires(jwt_gw, idp):
    token = rs256(idp, exp=int(time.time()) + 2)
    assert get(jwt_gw, "/jwks/x", token).status == 200
    assert get(jwt_gw, "/jwks/x", token).status == 200  # from the cache
    wait_for(lambda: get(jwt_gw, "/jwks/x", token).status == 401, timeout=10, what="expiry")


def test_unknown_kid_then_key_rotation_with_bounded_refreshes(jwt_gw, idp):
    keys = idp["keys"]
    rotated = jwt.encode(claims(), keys.rsa2, "RS256", {"kid": "r2"})
    assert get(jwt_gw, "/jwks/x", rotated).status == 401  # not published yet
    before = hits(idp)
    for _ in range(30):  # random kids must not turn into 30 fetches
        random_kid = jwt.encode(claims(), keys.rsa2, "RS256", {"kid": uuid.uuid4().hex})
        assert get(jwt_gw, "/jwks/x", random_kid).status == 401
    assert hits(idp) - before <= 3
    (idp["dir"] / "jwks.json").write_text(json.dumps(keys.jwks(rotated=True)))
    wait_for(lambda: get(jwt_gw, "/jwks/x", rotated).status == 200, timeout=10, what="rotation")
    old = rs256(idp)  # r1 is gone from the set: its tokens fail now (its cache was dropped)
    assert get(jwt_gw, "/jwks/x", old).status == 401


def test_unreachable_jwks_is_503_and_logged(jwt_gw, idp):
    response = get(jwt_gw, "/unreachable/x", rs256(idp))
    assert response.status == 503
    assert response.json()["error"] == "the identity provider's keys are unavailable"
    assert get(jwt_gw, "/unreachable/x").status == 401  # no token: still a plain 401
    jwt_gw.wait_log(r"JWKS http://127\.0\.0\.1:\d+/jwks\.json: .*keeping 0 key")


def test_jwks_is_refreshed_on_a_schedule(jwt_gw, idp):
    start = hits(idp, "/jwks.json?scheduled")
    wait_for(lambda: hits(idp, "/jwks.json?scheduled") >= start + 2, timeout=10, what="refreshes")


# -- oauth2-introspection ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def intro_gw(upstream, idp, tmp_path_factory):
    now = int(time.time())
    answers = {
        "good": {"active": True, "sub": "alice", "scope": "read write", "exp": now + 300},
        "other": {"active": True, "sub": "bob", "scope": "read"},
        "short": {"active": True, "sub": "alice", "scope": "read", "exp": now + 2},
        "dead": {"active": False},
        "fresh": {"active": True, "sub": "carol", "scope": "read"},
        "with-body": {"active": True, "sub": "dave", "scope": "read"},
    }
    (idp["dir"] / "tokens.json").write_text(json.dumps(answers))
    endpoint = f"{idp['url']}/introspect"
    settings = {"endpoint": endpoint, "client_id": "gw", "client_secret": "gw-secret"}
    config = base_config(upstream.url)
    config["consumers"] = [{"name": "alice", "groups": ["admins"], "jwt": {"subject": "alice"}}]
    plugins = {
        "read": {**settings, "required_scopes": ["read"]},
        "write": {**settings, "required_scopes": ["write"]},
        "wrongclient": {**settings, "client_secret": "nope"},
        "down": {**settings, "endpoint": f"http://127.0.0.1:{free_port()}/introspect"},
    }
    config["routes"] = [
        {
            "name": name,
            "match": {"paths": [f"/{name}/*"]},
            "upstream": "up",
            "plugins": {"oauth2-introspection": p},
        }
        for name, p in plugins.items()
    ]
    gw = Gateway(tmp_path_factory.mktemp("introspection"), config).start()
    yield gw
    gw.stop()


def test_introspection_active_token_is_cached(intro_gw, idp):
    before = hits(idp, "/introspect")
    for _ in range(5):
        headers = forwarded(get(intro_gw, "/read/x", "good"))
        assert headers["x-consumer-name"] == "alice"
        assert headers["x-auth-subject"] == "alice" and headers["x-auth-scopes"] == "read write"
    assert hits(idp, "/introspect") == before + 1
    bob = forwarded(get(intro_gw, "/read/x", "other"))
    assert bob["x-auth-subject"] == "bob" and "x-consumer-name" not in bob


def test_introspection_refusals(intro_gw):
    for token in ("dead", "unknown-token"):
        response = get(intro_gw, "/read/x", token)
        assert response.status == 401
        assert response.header("www-authenticate") == 'Bearer realm="fastgw", error="invalid_token"'
    missing = get(intro_gw, "/read/x")
    assert missing.status == 401 and missing.header("www-authenticate") == 'Bearer realm="fastgw"'
    assert get(intro_gw, "/write/x", "other").status == 403
    for route in ("/wrongclient/x", "/down/x"):
        response = get(intro_gw, route, "good")
        assert response.status == 503
        assert response.json()["error"] == "the token introspection endpoint is unavailable"
    intro_gw.wait_log("the endpoint answered 401")


def test_introspection_answer_expires_with_the_token(intro_gw):
    assert get(intro_gw, "/read/x", "short").status == 200
    wait_for(lambda: get(intro_gw, "/read/x", "short").status == 401, timeout=10, what="expiry")


def test_concurrent_requests_share_one_introspection(intro_gw, idp):
    before = hits(idp, "/introspect")
    statuses = in_parallel(lambda: get(intro_gw, "/read/x", "fresh").status, 10)
    assert statuses == [200] * 10
    assert hits(idp, "/introspect") == before + 1


def test_a_body_waits_while_the_token_is_introspected(intro_gw):
    body = bytes(range(256)) * 1200  # 300 KiB: more than is buffered before reading pauses
    response = request(
        intro_gw.port, "POST", "/read/upload", headers=bearer("with-body"), body=body
    )
    assert response.status == 200
    received = response.json()
    assert received["body_bytes"] == len(body)
    assert received["sha256"] == hashlib.sha256(body).hexdigest()
