"""ASGI middleware in front of every route: the `Host` header checked against the allowed names (421 with an
OpenAI error body: DNS rebinding), request bodies bounded in size (413) and in time (408) before anything
parses them, and requests counted by endpoint and status for /metrics."""

from __future__ import annotations

import asyncio
import json
import time

from starlette.exceptions import HTTPException

from .connections import host_name

MAX_BODY = 1 << 20  # bytes: far more than any context's worth of text; a bigger body is refused unread
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models")  # metric labels (bounded set)


class Guard:
    def __init__(self, app, metrics, max_body: int = MAX_BODY, allowed_hosts: tuple[str, ...] | None = None,
                 body_timeout: float = 30.0):
        self.app, self.metrics, self.max_body = app, metrics, max_body
        self.allowed_hosts, self.body_timeout = allowed_hosts, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = next((e for e in ENDPOINTS if path.startswith(e)), None)
        headers = dict(scope["headers"])
        refused = self._foreign_host(headers.get(b"host"))
        if refused:
            return await self._refuse(endpoint, send, 421, refused)
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body:
            return await self._refuse(endpoint, send, 413, self._message())
        status, received, deadline, complete = 500, 0, time.monotonic() + self.body_timeout, False

        async def bounded_receive():
            nonlocal received, complete
            if complete:  # the body is in: what comes now is the disconnect, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.body_timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_body:  # a chunked body that grows past the bound
                    raise HTTPException(413, self._message())
            return message

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if endpoint:
            self.metrics.in_progress.inc()
        try:
            await self.app(scope, bounded_receive, counting_send)
        finally:
            if endpoint:
                self.metrics.in_progress.dec()
                self.metrics.requests.labels(endpoint, str(status)).inc()

    def _foreign_host(self, header: bytes | None) -> str | None:
        if self.allowed_hosts is None or header is None:  # HTTP/1.0 may send none; browsers always do
            return None
        name = host_name(header)
        if name in self.allowed_hosts:
            return None
        shown = name[:80].encode("ascii", "backslashreplace").decode()
        return (f"this server does not answer to the Host `{shown}` (it answers to {', '.join(self.allowed_hosts)}); "
                f"start it with --allowed-host {shown} to add it")

    async def _refuse(self, endpoint, send, status: int, message: str):
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": None}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
        if endpoint:
            self.metrics.requests.labels(endpoint, str(status)).inc()

    def _message(self) -> str:
        return f"the request body is larger than {self.max_body} bytes"
