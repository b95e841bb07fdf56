"""ASGI middleware in front of every route: request bodies bounded in size before anything parses them
(413 with an OpenAI error body), and requests counted by endpoint and status for /metrics."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException

MAX_BODY = 1 << 20  # bytes: far more than any context's worth of text; a bigger body is refused unread
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models")  # metric labels (bounded set)


class Guard:
    def __init__(self, app, metrics, max_body: int = MAX_BODY):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = next((e for e in ENDPOINTS if path.startswith(e)), None)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body:
            return await self._too_large(endpoint, send)
        status, received = 500, 0

        async def bounded_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
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

    async def _too_large(self, endpoint, send):
        body = json.dumps({"error": {"message": self._message(),
                                     "type": "invalid_request_error", "param": None, "code": None}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        if endpoint:
            self.metrics.requests.labels(endpoint, "413").inc()

    def _message(self) -> str:
        return f"the request body is larger than {self.max_body} bytes"
