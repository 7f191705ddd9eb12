"""Router: most specific wins, 405 versus 404, hosts, headers, strip_prefix, scale."""

import random

from fastgw.router import Allow, Router, _walk, host_name, strip_prefix


def build(*specs):
    router = Router()
    for i, spec in enumerate(specs):
        path, *rest = spec
        opts = rest[0] if rest else {}
        router.add(f"r{i}", i, path, opts.get("methods"), opts.get("hosts"), opts.get("headers"))
    assert router.finish() == []
    return router


def route(router, path, method=b"GET", host=b"example.com", headers=()):
    found = router.match(method, host, path, list(headers))
    return found.route if found is not None and not isinstance(found, Allow) else found


def test_exact_beats_param_beats_wildcard():
    router = build(("/users/*",), ("/users/{id}",), ("/users/me",), ("/*",))
    assert route(router, b"/users/me") == "r2"
    assert route(router, b"/users/42") == "r1"
    assert route(router, b"/users/42/posts") == "r0"
    assert route(router, b"/users") == "r0"  # /users/* matches /users itself
    assert route(router, b"/users/") == "r0"  # an empty segment is no {id}
    assert route(router, b"/other") == "r3"
    assert route(router, b"/") == "r3"


def test_longer_prefix_wins_and_segments_are_whole():
    router = build(("/api/*",), ("/api/v1/*",))
    assert route(router, b"/api/v1/x/y") == "r1"
    assert route(router, b"/api/v1") == "r1"
    assert route(router, b"/api/v2") == "r0"
    assert route(router, b"/apiv1") is None
    assert route(router, b"/ap") is None


def test_backtracks_from_a_dead_end_param_branch():
    router = build(("/a/{x}/c",), ("/a/b/*",), ("/a/*",))
    assert route(router, b"/a/q/c") == "r0"
    assert route(router, b"/a/b/c") == "r1"
    assert route(router, b"/a/q/d") == "r2"


def test_the_direct_descent_agrees_with_the_depth_first_walk():
    # match() first follows one branch without recursion; on random trees, with methods that
    # make leaves refuse, it must give what the plain depth-first walk gives.
    rng = random.Random(7)
    words = ["a", "b", "c", "{p}"]
    for _ in range(300):
        specs, seen = [], set()
        for _ in range(rng.randint(1, 8)):
            path = "/" + "/".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
            path += rng.choice(["", "", "/*"])
            if "{" not in path and not path.endswith("*"):
                path += "/{q}"  # exact paths take the dict, not the tree
            methods = rng.choice([None, ("GET",), ("POST",)])
            if path not in seen:
                seen.add(path)
                specs.append((path, {"methods": methods}))
        router = Router()
        for i, (path, opts) in enumerate(specs):
            router.add(f"r{i}", i, path, opts["methods"], None, None)
        router.finish()  # ties (same shape, other parameter names) are fine here
        for _ in range(20):
            path = "/" + "/".join(rng.choice("abcd") for _ in range(rng.randint(1, 4)))
            for method in (b"GET", b"POST"):
                refused = []
                segments = path.encode().split(b"/")
                expected = _walk(router.root, segments, 1, method, b"h", [], refused)
                found = router.match(method, b"h", path.encode(), [])
                if expected is None:
                    assert found is None or isinstance(found, Allow), (specs, path)
                    assert (found is None) == (not refused), (specs, path)
                else:
                    assert found is expected, (specs, path, method)


def test_methods_give_405_with_allow_unless_another_route_accepts():
    router = build(
        ("/items/{id}", {"methods": ("GET",)}),
        ("/items/{id}", {"methods": ("DELETE",)}),
        ("/orders", {"methods": ("POST",)}),
    )
    assert route(router, b"/items/1", b"GET") == "r0"
    assert route(router, b"/items/1", b"HEAD") == "r0"  # GET implies HEAD
    assert route(router, b"/items/1", b"DELETE") == "r1"
    refused = route(router, b"/items/1", b"PUT")
    assert isinstance(refused, Allow)
    assert refused.methods == b"DELETE, GET, HEAD"
    assert isinstance(route(router, b"/orders", b"GET"), Allow)
    fallback = build(("/x/{id}", {"methods": ("GET",)}), ("/x/*",))
    assert route(fallback, b"/x/1", b"POST") == "r1"


def test_hosts_exact_wildcard_and_ports():
    router = build(
        ("/p", {"hosts": ("api.example.com",)}), ("/p", {"hosts": ("*.example.com",)}), ("/p",)
    )
    assert route(router, b"/p", host=b"api.example.com") == "r0"
    assert route(router, b"/p", host=b"API.Example.com:8080") == "r0"
    assert route(router, b"/p", host=b"www.example.com") == "r1"
    assert route(router, b"/p", host=b"a.b.example.com") == "r1"
    assert route(router, b"/p", host=b"example.com") == "r2"
    assert route(router, b"/p", host=b"") == "r2"
    only = build(
        ("/p", {"hosts": ("api.example.com",)}),
    )
    assert route(only, b"/p", host=b"other.com") is None
    assert host_name(b"[::1]:8080") == b"[::1]"


def test_header_values():
    router = build(("/h", {"headers": {"X-Version": "2"}}), ("/h",))
    assert route(router, b"/h", headers=[(b"x-version", b"2")]) == "r0"
    assert route(router, b"/h", headers=[(b"X-VERSION", b"2")]) == "r0"
    assert route(router, b"/h", headers=[(b"X-Version", b"3")]) == "r1"
    assert route(router, b"/h") == "r1"


def test_ties_are_reported():
    router = Router()
    router.add("a", 0, "/t", ("GET",), None, None)
    router.add("b", 1, "/t", ("GET", "POST"), None, None)
    router.add("c", 2, "/h", None, ("a.com",), None)
    router.add("d", 3, "/h", None, ("a.com", "b.com"), None)
    router.add("e", 4, "/v", None, None, {"X": "1"})
    router.add("f", 5, "/v", None, None, {"X": "2"})  # disjoint header values: no tie
    ties = router.finish()
    assert [index for index, _ in ties] == [1, 3]


def test_strip_prefix():
    assert strip_prefix(b"/api/users/1", 1) == b"/users/1"
    assert strip_prefix(b"/api", 1) == b"/"
    assert strip_prefix(b"/api/", 1) == b"/"
    assert strip_prefix(b"/a/b/c", 2) == b"/c"
    assert strip_prefix(b"/a/b/c", 0) == b"/a/b/c"


def test_ten_thousand_routes_match_like_ten():
    router = Router()
    for i in range(10_000):
        router.add(f"r{i}", i, f"/svc{i}/items/{{id}}", None, None, None)
        router.add(f"e{i}", 10_000 + i, f"/exact{i}", None, None, None)
    router.add("wild", 20_000, "/*", None, None, None)
    assert router.finish() == []
    assert route(router, b"/svc9999/items/7") == "r9999"
    assert route(router, b"/svc0/items/7") == "r0"
    assert route(router, b"/exact5000") == "e5000"
    assert route(router, b"/svc10000/items/7") == "wild"
