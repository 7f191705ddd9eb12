"""A small asynchronous HTTP/1.1 client for the gateway's own calls (JWKS, introspection).

One request per connection (`Connection: close`), h11 for framing, TLS with verification for
https URLs, a deadline over the whole exchange and a bound on the response size. These calls
are rare (cached), so simplicity beats pooling here.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import h11

from .tls import client_context

MAX_RESPONSE = 1 << 20


class OutboundError(Exception):
    """The call failed: connection, TLS, timeout, protocol or size."""


async def fetch(
    url: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """(status, body) of one request; raises OutboundError."""
    try:
        async with asyncio.timeout(timeout):
            return await _exchange(url, method, body, headers or [], tls)
    except TimeoutError:
        raise OutboundError(f"{method} {url}: no complete answer within {timeout:g}s") from None
    except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
        raise OutboundError(f"{method} {url}: {exc}") from None


async def _exchange(
    url: str, method: str, body: bytes, headers: list[tuple[str, str]], tls: ssl.SSLContext | None
) -> tuple[int, bytes]:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    context = (tls or client_context(None, True)) if secure else None
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if secure else None
    )
    try:
        conn = h11.Connection(h11.CLIENT)
        fields = [("Connection", "close"), ("User-Agent", "fastgw")]
        if not any(name.lower() == "host" for name, _ in headers):
            fields.insert(0, ("Host", parts.netloc))
        fields += headers
        if body or method not in ("GET", "HEAD"):
            fields.append(("Content-Length", str(len(body))))
        writer.write(conn.send(h11.Request(method=method, target=target, headers=fields)))
        if body:
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_RESPONSE:
                    raise OutboundError(
                        f"{method} {url}: response larger than {MAX_RESPONSE} bytes"
                    )
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, b"".join(chunks)
    finally:
        writer.close()
