"""A test upstream, run as its own process: `python upstream.py` prints its port, then serves.

Requests are parsed with h11 (a parser independent of the gateway's httptools); responses are
written by hand so that the server can also misbehave on purpose. The path picks a behaviour:

  /status/N             status N with a small body (none for 1xx/204/304)
  /big?size=N           N bytes with Content-Length
  /chunked?n=K          K chunks then trailers `X-Trailer: done` and `X-Count: K`
  /close-delimited      no length: the body ends when the server closes
  /slow?delay=S         wait S seconds, then answer
  /drop                 close without answering
  /garbage              an invalid response
  /interim              `103 Early Hints` then `100 Continue` then the answer
  /ws                   `101 Switching Protocols`, then echo bytes back upper-cased
  /stale                answer the first request of a connection; close on a later one
  /midbody-reset        promise 1 MiB, send 1 KiB, reset the connection
  /truncated            a chunked head and one 500-byte chunk, then close (no last chunk)
  /sink                 reply with the size and sha256 of the body
  /stats                how many connections are open now, requests served (all but these
                        control paths), probes
  /set-delay?delay=S    from now on, every echo answer waits S seconds (0: none)
  /set-status?status=N  from now on, every echo answer has status N (200: normal again)
  /health               a health probe: counted (/stats "probes"), answered with the status
                        /set-health?status=N set (200 at first)
  anything else         200 JSON echo: method, target, headers, body size and sha256, connection
                        id, the server's port; header `X-Upstream-Port`
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import socket
import ssl
import sys
from urllib.parse import parse_qs, urlsplit

import h11

CONNECTION_IDS = itertools.count(1)
OPEN = [0]  # connections open right now, for /stats
OPTIONS_SEEN = [0]  # OPTIONS requests received, for /stats (CORS preflights must not arrive)
TRAILERS: dict[int, list] = {}  # request trailers, by id of the h11 Request (frozen)
DELAY = [0.0]  # seconds every echo answer waits (/set-delay)
HEALTH = [200]  # the status /health answers (/set-health)
PROBES = [0]  # /health requests received
REQUESTS = [0]  # requests received, but for the control paths (/stats, /health, /set-*)
STATUS = [200]  # the status echo answers have (/set-status)
PORT = [0]


def head(status: int, headers: list[tuple[str, str]], reason: str = "X") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn_id = next(CONNECTION_IDS)
    OPEN[0] += 1
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    served = 0
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            request, body_size, digest = await read_request(conn, reader)
            if request is None:
                return
            served += 1
            target = request.target.decode("latin-1")
            url = urlsplit(target)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            path = url.path
            if path == "/stale" and served > 1:
                return  # closes: as if the keep-alive timeout had passed just before
            keep = await respond(
                writer, reader, conn, request, path, query, body_size, digest, conn_id, served
            )
            if not keep or conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            leftover = bytes(conn.trailing_data[0])
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
            if leftover:
                conn.receive_data(leftover)  # (an empty bytes object would mean EOF to h11)
    except (ConnectionError, h11.RemoteProtocolError, _Tunnel):
        pass
    finally:
        OPEN[0] -= 1
        writer.close()


class _Tunnel(Exception):
    pass


async def read_request(conn: h11.Connection, reader: asyncio.StreamReader):
    request = None
    size = 0
    sha = hashlib.sha256()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(256 * 1024)
            conn.receive_data(data)
            if not data and request is None:
                return None, 0, ""
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            sha.update(event.data)
        elif isinstance(event, h11.EndOfMessage):
            TRAILERS[id(request)] = [(k.decode(), v.decode()) for k, v in event.headers.raw_items()]
            return request, size, sha.hexdigest()
        elif isinstance(event, h11.ConnectionClosed):
            return None, 0, ""
        elif event is h11.PAUSED:
            return request, size, sha.hexdigest()


async def respond(
    writer, reader, conn, request, path, query, body_size, digest, conn_id, served
) -> bool:
    w = writer.write
    if request.method == b"OPTIONS":
        OPTIONS_SEEN[0] += 1
    if path not in ("/stats", "/health") and not path.startswith("/set-"):
        REQUESTS[0] += 1
    if path.startswith("/status/"):
        status = int(path.split("/")[2])
        body = b"" if status in (204, 304) else b"status body"
        headers = [("Content-Length", str(len(body)))] if status not in (204, 304) else []
        if status == 304:
            headers = [("ETag", '"x"')]
        w(head(status, headers) + body)
    elif path == "/big":
        size = int(query.get("size", "1048576"))
        w(head(200, [("Content-Length", str(size)), ("Content-Type", "application/octet-stream")]))
        if request.method == b"HEAD":
            size = 0
        block = bytes(range(256)) * 1024
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            w(piece)
            sent += len(piece)
            await writer.drain()
    elif path == "/chunked":
        count = int(query.get("n", "3"))
        w(head(200, [("Transfer-Encoding", "chunked"), ("Trailer", "X-Trailer, X-Count")]))
        for i in range(count):
            data = f"chunk-{i};".encode()
            w(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
        w(b"0\r\nX-Trailer: done\r\nX-Count: %d\r\n\r\n" % count)
    elif path == "/close-delimited":
        w(head(200, [("Content-Type", "text/plain")]) + b"until the end")
        await writer.drain()
        return False
    elif path == "/slow":
        await asyncio.sleep(float(query.get("delay", "1")))
        w(head(200, [("Content-Length", "4")]) + b"slow")
    elif path == "/drop":
        return False
    elif path == "/garbage":
        w(b"this is not HTTP\r\n\r\n")
        return False
    elif path == "/interim":
        w(head(103, [("Link", "</x.css>; rel=preload")]) + head(100, []))
        w(head(200, [("Content-Length", "5")]) + b"final")
    elif path == "/ws":
        w(head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade")]))
        early, _ = conn.trailing_data
        if early:
            w(bytes(early).upper())
        await writer.drain()
        while True:
            data = await reader.read(65536)
            if not data:
                break
            w(data.upper())
            await writer.drain()
        raise _Tunnel
    elif path == "/midbody-reset":
        w(head(200, [("Content-Length", str(1 << 20))]) + b"x" * 1024)
        await writer.drain()
        writer.transport.abort()
        return False
    elif path == "/truncated":
        w(head(200, [("Transfer-Encoding", "chunked")]) + b"1f4\r\n" + b"x" * 500 + b"\r\n")
        await writer.drain()
        return False
    elif path == "/stats":
        body = json.dumps(
            {
                "open": OPEN[0],
                "connections": conn_id,
                "options": OPTIONS_SEEN[0],
                "probes": PROBES[0],
                "requests": REQUESTS[0],
            }
        ).encode()
        w(head(200, [("Content-Length", str(len(body)))]) + body)
    elif path == "/health":
        PROBES[0] += 1
        w(head(HEALTH[0], [("Content-Length", "2")]) + b"ok")
    elif path == "/set-health":
        HEALTH[0] = int(query.get("status", "200"))
        w(head(200, [("Content-Length", "2")]) + b"ok")
    elif path == "/set-status":
        STATUS[0] = int(query.get("status", "200"))
        w(head(200, [("Content-Length", "2")]) + b"ok")
    elif path == "/set-delay":
        DELAY[0] = float(query.get("delay", "0"))
        w(head(200, [("Content-Length", "2")]) + b"ok")
    elif path == "/sink":
        body = json.dumps({"body_bytes": body_size, "sha256": digest}).encode()
        w(
            head(200, [("Content-Length", str(len(body))), ("Content-Type", "application/json")])
            + body
        )
    else:
        if DELAY[0]:
            await asyncio.sleep(DELAY[0])
        body = json.dumps(
            {
                "port": PORT[0],
                "method": request.method.decode(),
                "target": request.target.decode("latin-1"),
                "http_version": request.http_version.decode(),
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")]
                    for k, v in request.headers.raw_items()
                ],
                "trailers": TRAILERS.pop(id(request), []),
                "body_bytes": body_size,
                "sha256": digest,
                "connection": conn_id,
                "served": served,
                "sni": SNI.get(id(writer.get_extra_info("ssl_object"))),
            }
        ).encode()
        extra = [("X-Upstream-Hop", "yes"), ("X-Upstream-Port", str(PORT[0]))]
        if path == "/hop":
            extra += [
                ("Connection", "X-Secret-Hop"),
                ("X-Secret-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
            ]
        w(
            head(
                STATUS[0],
                [("Content-Length", str(len(body))), ("Content-Type", "application/json"), *extra],
            )
            + body
        )
    await writer.drain()
    return True


SNI: dict[int, str | None] = {}  # the server name each TLS connection asked for


def remember_sni(ssl_object: ssl.SSLObject, server_name: str | None, _context: object) -> None:
    SNI[id(ssl_object)] = server_name


async def main() -> None:
    """`upstream.py [PORT [CERT KEY]]`: with a certificate and key, it speaks TLS."""
    context = None
    if len(sys.argv) > 3:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
        context.sni_callback = remember_sni
    server = await asyncio.start_server(
        handle, "127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0, ssl=context
    )
    PORT[0] = server.sockets[0].getsockname()[1]
    print(PORT[0], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
