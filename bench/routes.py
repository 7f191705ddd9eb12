"""Router lookup cost with 10 and with 10,000 routes: `python -m bench.routes`.

Routes are a realistic mix (exact paths, `{param}` segments, prefix wildcards, some with
methods); lookups hit each kind. The cost must not grow with the number of routes.
"""

from __future__ import annotations

import argparse
import json
import time

from fastgw.router import Router

LOOKUPS = (
    (b"GET", b"/svc{n}/health"),  # exact
    (b"GET", b"/svc{n}/users/42"),  # parameter
    (b"POST", b"/svc{n}/files/a/b/c.txt"),  # wildcard
    (b"GET", b"/nothing/here"),  # miss: falls to the catch-all
)


def build(count: int) -> Router:
    router = Router()
    services = max(1, count // 4)
    index = 0
    for n in range(services):
        for path, methods in (
            (f"/svc{n}/health", None),
            (f"/svc{n}/users/{{id}}", ("GET", "DELETE")),
            (f"/svc{n}/users/{{id}}", ("POST",)),
            (f"/svc{n}/files/*", None),
        ):
            router.add(f"r{index}", index, path, methods, None, None)
            index += 1
    router.add("catch-all", index, "/*", None, None, None)
    assert router.finish() == []
    return router


def measure(router: Router, services: int, rounds: int) -> float:
    """Nanoseconds per lookup, best of 5."""
    requests = [(m, p.replace(b"{n}", str(services - 1).encode())) for m, p in LOOKUPS]
    match = router.match
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(rounds):
            for method, path in requests:
                match(method, b"example.com", path, [])
        best = min(best, (time.perf_counter_ns() - started) / (rounds * len(requests)))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    results = {}
    for count in (10, 10_000):
        results[count] = measure(build(count), max(1, count // 4), args.rounds)
    print(f"{'routes':>8}  {'ns/lookup':>10}")
    for count, ns in results.items():
        print(f"{count:>8}  {ns:>10.0f}")
    ratio = results[10_000] / results[10]
    print(f"10,000 vs 10 routes: {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"ns_per_lookup": results, "ratio": ratio}, out, indent=2)


if __name__ == "__main__":
    main()
