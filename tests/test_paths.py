"""Path normalisation end to end: encoded characters, `;parameters` and dot segments cannot slip
past a route's plugins; what is forwarded is the normalised path."""

import json
import random
import re

import pytest

from .support import Client, Gateway, base_config, request

UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def settings(upstream_url: str, encoded_slash: str | None = None) -> dict:
    config = base_config(upstream_url)
    if encoded_slash is not None:
        config["server"]["paths"] = {"encoded_slash": encoded_slash}
    config["routes"] = [
        {
            "name": "admin",
            "match": {"paths": ["/admin/*"]},
            "upstream": "up",
            "plugins": {"ip-restriction": {"deny": ["0.0.0.0/0", "::/0"]}},
        },
        # preserve_host: false marks what this route forwarded (Host is the target's).
        {
            "name": "users",
            "match": {"paths": ["/users/{id}"]},
            "upstream": "up",
            "preserve_host": False,
        },
        {"name": "api", "match": {"paths": ["/api/*"]}, "upstream": "up", "strip_prefix": True},
        {"name": "all", "match": {"paths": ["/*"]}, "upstream": "up"},
    ]
    return config


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    gateway = Gateway(tmp_path_factory.mktemp("paths"), settings(upstream.url)).start()
    yield gateway
    gateway.stop()


def seen(response) -> tuple[str, str]:
    """(target the upstream received, Host it received)."""
    assert response.status == 200, response.body
    body = response.json()
    return body["target"], dict(body["headers"])["Host"]


@pytest.mark.parametrize(
    "target",
    [
        "/%61dmin/secret",
        "/admin;x=1/secret",
        "/%61dmin;jsessionid=1/x",
        "/public/..;/admin/x",
        "/public/%2e%2E/admin",
        "/x/.%2e/admin;/y",
        "/;x/admin/z",
        "/adm%69n",
    ],
)
def test_encoded_and_parameter_bypasses_reach_the_admin_route(gw, target):
    response = request(gw.port, "GET", target)
    assert response.status == 403, (target, response.body)


def test_case_and_other_escapes_are_not_the_admin_route(gw):
    target, _ = seen(request(gw.port, "GET", "/ADMIN/%3a%2a"))
    assert target == "/ADMIN/%3A%2A"  # reserved escapes kept, their hex upper-cased


def test_a_parameter_route_with_an_encoded_id(gw):
    target, host = seen(request(gw.port, "GET", "/users/%41b%7e;v=2"))
    assert target == "/users/Ab~;v=2" and host.startswith("127.0.0.1:")


def test_strip_prefix_sees_the_normalised_path(gw):
    target, _ = seen(request(gw.port, "GET", "/api/%61bc;p=1/./x?q=%61"))
    assert target == "/abc;p=1/x?q=%61"  # the query is forwarded as sent


@pytest.mark.parametrize("target", ["/a%zz", "/a%4", "/users/a%2Fb", "/x%5cy", "/../etc"])
def test_bad_paths_are_400(gw, target):
    response = request(gw.port, "GET", target)
    assert response.status == 400
    assert response.json()["status"] == 400 and response.json()["error"]


def test_encoded_slash_modes(upstream, tmp_path):
    gateway = Gateway(tmp_path, settings(upstream.url, "keep")).start()
    try:
        target, host = seen(request(gateway.port, "GET", "/users/a%2fb"))
        assert target == "/users/a%2Fb" and host.startswith("127.0.0.1:")  # one segment: {id}
        assert seen(request(gateway.port, "GET", "/x%5cy"))[0] == "/x%5Cy"
        gateway.write_config(settings(upstream.url, "decode"))
        gateway.signal(1)
        gateway.wait_log("config version 2 .* live")
        target, host = seen(request(gateway.port, "GET", "/users/a%2Fb"))
        assert target == "/users/a/b" and host == "gw.test"  # two segments: the catch-all
        assert seen(request(gateway.port, "GET", "/x%5Cy"))[0] == "/x\\y"
        assert request(gateway.port, "GET", "/%61dmin%2Fx").status == 403
    finally:
        gateway.stop()


def reference(path: str) -> str | None:
    """An independent normaliser: None for a path that must be refused (400)."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", path) or re.search(r"%(2f|5c)", path, re.I):
        return None

    def decode(match: re.Match) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in UNRESERVED else "%" + match.group(1).upper()

    decoded = re.sub(r"%([0-9A-Fa-f]{2})", decode, path)
    stack: list[str] = []
    for segment in decoded.split("/")[1:]:
        name = segment.split(";", 1)[0]
        if name in ("", "."):
            continue
        if name == "..":
            if not stack:
                return None
            stack.pop()
        else:
            stack.append(name)
    return "/" + "/".join(stack)


PIECES = [
    "admin",
    "%61dmin",
    "adm%69n",
    "%41dmin",
    "ADMIN",
    "admin;x=1",
    "admin;",
    "%61dmin;a=b",
    "..",
    ".",
    "%2e",
    "%2E%2e",
    ".%2e",
    "..;x",
    ".;",
    "",
    ";",
    ";x",
    "secret",
    "x",
    "%7e",
    "%3a",
    "a%2fb",
    "%zz",
    "public",
    "users",
    "api",
]


def test_no_path_that_normalises_under_admin_reaches_the_upstream(gw):
    rng = random.Random(20261130)
    client = Client(gw.port)
    try:
        for case in range(1000):
            path = "/" + "/".join(rng.choice(PIECES) for _ in range(rng.randint(1, 5)))
            expected = reference(path)
            response = client.request("GET", path)
            if expected is None:
                assert response.status == 400, (case, path, response.status)
                client.close()
                client = Client(gw.port)  # a 400 closes the connection
            elif expected == "/admin" or expected.startswith("/admin/"):
                assert response.status == 403, (case, path, expected, response.status)
            else:
                assert response.status == 200, (case, path, expected, response.body)
                forwarded = json.loads(response.body)["target"].partition("?")[0]
                if expected != "/api" and not expected.startswith("/api/"):  # strip_prefix
                    assert reference(forwarded) == expected, (case, path, forwarded)
    finally:
        client.close()
