"""A small HTTP server speaking the two routes of OpenAI's API that self-instruct and judge use
(`GET /v1/models`, `POST /v1/chat/completions`), with scripted replies and scripted failures — for what a
real server cannot be made to do on demand: answer 500, 404 or a body that is not JSON, slow down so a
client can be killed mid-run. The happy path runs against a real `llamalab serve` (test_judge_e2e.py).

    with ScriptedEndpoint(reply=fn) as url:          # fn(messages) -> str
        ...
    ScriptedEndpoint(status=500), ScriptedEndpoint(body=b"<html>")
"""

from __future__ import annotations

import json
import threading
import time

from loopback import LoopbackServer, QuietHandler


class ScriptedEndpoint(LoopbackServer):
    def __init__(self, reply=None, *, status: int = 200, body: bytes | None = None, delay: float = 0.0,
                 fail_first: int = 0):
        self.reply, self.status, self.body, self.delay = reply, status, body, delay
        self.fail_first = fail_first  # answer 503 to this many chat requests, then normally
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(QuietHandler):
            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model",
                                                                         "created": 0, "owned_by": "tests"}]})
                self._send(404, {"error": {"message": "no such route"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with endpoint.lock:
                    endpoint.requests.append(body)
                    failing = endpoint.fail_first > 0
                    endpoint.fail_first -= failing
                time.sleep(endpoint.delay)
                if failing:
                    return self._send(503, {"error": {"message": "warming up"}})
                if endpoint.status != 200:
                    return self._send(endpoint.status, {"error": {"message": f"scripted {endpoint.status}"}})
                if endpoint.body is not None:
                    return self._raw(200, endpoint.body, "application/json")
                text = endpoint.reply(body["messages"])
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status, obj):
                self._raw(status, json.dumps(obj).encode(), "application/json")

        self._listen(Handler, "/v1")
