"""HTTP plumbing shared by the routes: the one error type, JSON error bodies, and two ASGI middlewares.

Every error the server answers is ``{"error": "<one line>", "status": <code>}``.

- ``BodyLimit``: a request body over the cap is refused with 413 before it is read (``Content-Length``), or as
  soon as the streamed bytes pass the cap (chunked uploads); nothing over the cap is ever buffered.
- ``Observe``: security headers on every response (a CSP that allows nothing from outside the server) and the
  request count, status and latency for ``/v1/metrics``.
"""
from __future__ import annotations

import json
import time

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
                                 b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


class ApiError(Exception):
    """A client-facing error: HTTP ``status`` and a one-line ``message`` (newlines are flattened)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())
        self.headers = headers or {}


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": " ".join(str(message).split()), "status": status}).encode()


async def send_error(send, status: int, message: str) -> None:
    """A JSON error straight through ASGI (for middleware that answers before any route runs)."""
    body = error_body(status, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(ApiError):
    def __init__(self, cap: int):
        super().__init__(413, f"request body: over the {cap / 2**20:g} MB limit")


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (413), before reading them when the length is declared."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await send_error(send, 400, f"content-length {declared[:40]!r}: not a byte count")
            if int(declared) > self.max_bytes:
                return await send_error(send, 413, BodyTooLarge(self.max_bytes).message)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message
        await self.app(scope, limited, send)


class Observe:
    """Add ``SECURITY_HEADERS`` to every response and record ``(route, status, seconds)`` in ``metrics``."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500
        self.metrics.in_flight += 1

        async def send_with_headers(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *[(k, v) for k, v in SECURITY_HEADERS if k not in have]]}
            await send(message)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.metrics.in_flight -= 1
            route = scope.get("route")
            self.metrics.record(getattr(route, "path", "other"), scope["method"], status,
                                time.perf_counter() - start)
