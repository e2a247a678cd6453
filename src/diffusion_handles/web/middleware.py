"""ASGI middleware of the web app: the request body limit and the Host / Origin guard.

The app answers only requests addressed to it (the ``Host`` header names one of the allowed
hosts: no DNS rebinding) and refuses writes from other origins (an ``Origin`` header other than
the page's own).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from fastapi import HTTPException

from diffusion_handles.errors import HandlesError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, whether announced
    by Content-Length or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        msg = f"request: expected a body of at most {self.max_bytes // (1024 * 1024)} MB in total"
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, msg + f", got {int(length) / 1e6:.1f} MB")
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(msg)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, msg)


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"name:port"`` -> ``("name", port)``, ``"name"`` -> ``("name", None)``, IPv6 in brackets
    (``"[::1]:80"``); lower-cased; None when malformed."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            return None
        name, rest = v[: end + 1], v[end + 1:]
    else:
        name, sep, port = v.partition(":")
        rest = sep + port
    if not name or any(c in name for c in "/@?#\\ "):
        return None
    if not rest:
        return name, None
    if rest[0] != ":" or not rest[1:].isdigit() or not 0 < int(rest[1:]) < 65536:
        return None
    return name, int(rest[1:])


def parse_allowed_hosts(hosts: tuple[str, ...]) -> tuple[tuple[str, int | None], ...]:
    out = []
    for h in hosts:
        parsed = split_host(h) if isinstance(h, str) else None
        if parsed is None:
            raise HandlesError(f"allowed_hosts: expected entries like 'localhost', '127.0.0.1:7860' or '[::1]:7860', got {h!r}")
        out.append(parsed)
    if not out:
        raise HandlesError("allowed_hosts: expected at least one host name, got none")
    return tuple(out)


class HostGuard:
    """ASGI middleware: answer only requests addressed to this server, and refuse cross-origin writes.

    * ``Host`` must match one of ``allowed`` (a DNS-rebinding page reaches a loopback server
      under its own name: refused with 400).
    * A write (POST, PUT, PATCH, DELETE) carrying ``Origin`` must come from the request's own
      origin (``scheme://host``), i.e. the app's page; another site's form or fetch (including
      multipart uploads) is refused with 403. Requests without ``Origin`` (curl, scripts)
      pass: browsers always send it on cross-origin writes.
    """

    def __init__(self, app, allowed: tuple[tuple[str, int | None], ...]):
        self.app = app
        self.allowed = allowed

    def host_ok(self, host: str) -> bool:
        parsed = split_host(host)
        if parsed is None:
            return False
        name, port = parsed
        return any(name == an and (ap is None or ap == port) for an, ap in self.allowed)

    def expected(self) -> str:
        return ", ".join(n if p is None else f"{n}:{p}" for n, p in self.allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # the app has no websocket routes: none is accepted
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope.get("headers") or []:
            headers.setdefault(k.lower(), v.decode("latin-1"))
        host = headers.get(b"host")
        if host is None or not self.host_ok(host):
            got = "no Host header" if host is None else json.dumps(host[:100])
            return await _send_json(send, 400, f"Host: expected this server's address ({self.expected()}), got {got}; "
                                               "open the page at the address the server printed")
        origin = headers.get(b"origin")
        if scope.get("method", "GET").upper() in WRITE_METHODS and origin is not None:
            parts = urlsplit(origin.strip()) if origin.strip().lower() != "null" else None
            same = (parts is not None and parts.scheme in ("http", "https") and not parts.path.strip("/")
                    and parts.netloc.lower() == host.strip().lower())
            if not same:
                return await _send_json(send, 403, f"Origin: expected a request from this server's own page "
                                                   f"(http://{host.strip()[:100]}), got a cross-origin {scope.get('method')} "
                                                   f"from {json.dumps(origin[:100])}; refused")
        return await self.app(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit; an HTTPException, so
    FastAPI's body parsing lets it through and it is answered as 413 JSON."""

    def __init__(self, detail: str):
        super().__init__(status_code=413, detail=detail)


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
