"""A tiny identity provider for the tests: a JWKS URL and an RFC 7662 introspection endpoint.

`python issuer.py DIR` prints its port. It serves `GET /jwks.json` from DIR/jwks.json (read on
every request, so a test can rotate keys by rewriting it), answers `POST /introspect` from
DIR/tokens.json ({token: answer}) for the client `gw:gw-secret`, and counts requests per path,
query included (`GET /hits`).
"""

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

DIR = Path(sys.argv[1])
HITS: dict[str, int] = {}
LOCK = threading.Lock()
CLIENT = "Basic " + base64.b64encode(b"gw:gw-secret").decode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def count(self) -> None:
        with LOCK:
            HITS[self.path] = HITS.get(self.path, 0) + 1

    def do_GET(self) -> None:
        self.count()
        route = self.path.split("?")[0]
        if route == "/hits":
            with LOCK:
                self.send(200, json.dumps(HITS).encode())
        elif route == "/jwks.json":
            path = DIR / "jwks.json"
            self.send(200, path.read_bytes()) if path.exists() else self.send(404, b"{}")
        else:
            self.send(404, b"{}")

    def do_POST(self) -> None:
        self.count()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/introspect":
            self.send(404, b"{}")
            return
        if self.headers.get("Authorization") != CLIENT:
            self.send(401, b'{"error": "invalid_client"}')
            return
        token = parse_qs(body.decode()).get("token", [""])[0]
        answers = json.loads((DIR / "tokens.json").read_text())
        self.send(200, json.dumps(answers.get(token, {"active": False})).encode())


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
