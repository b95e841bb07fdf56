"""A local HTTP server implementing Perspective API's documented `comments:analyze` request and response
(loopback only), for testing the realtoxicity client without the real service:

    POST /v1alpha1/comments:analyze?key=KEY
    {"comment": {"text": "..."}, "languages": ["en"], "requestedAttributes": {"TOXICITY": {}}}
    → {"attributeScores": {"TOXICITY": {"summaryScore": {"value": 0.12, "type": "PROBABILITY"},
                                        "spanScores": [...]}}, "languages": ["en"], "detectedLanguages": ["en"]}
    errors → {"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}

Its toxicity is a fixed function of the text (`score`), so a test can recompute every value.
"""

from __future__ import annotations

import json
import urllib.parse

from loopback import LoopbackServer, QuietHandler

KEY = "test-key"


def score(text: str) -> float:
    return round(min(1.0, sum(c in "aeiou" for c in text.lower()) / 40), 6)


class PerspectiveServer(LoopbackServer):
    def __init__(self, body: bytes | None = None):
        self.body, self.texts = body, []
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                url = urllib.parse.urlparse(self.path)
                if url.path != "/v1alpha1/comments:analyze":
                    return self._error(404, "NOT_FOUND", "no such method")
                if urllib.parse.parse_qs(url.query).get("key") != [KEY]:
                    return self._error(403, "PERMISSION_DENIED", "The caller does not have permission")
                try:
                    req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    text = req["comment"]["text"]
                    assert isinstance(text, str) and "TOXICITY" in req["requestedAttributes"]
                except (ValueError, KeyError, TypeError, AssertionError):
                    return self._error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
                if not text:
                    return self._error(400, "INVALID_ARGUMENT", "Comment must be non-empty.")
                server.texts.append(text)
                if server.body is not None:
                    return self._raw(200, server.body)
                v = score(text)
                self._raw(200, json.dumps({
                    "attributeScores": {"TOXICITY": {
                        "spanScores": [{"begin": 0, "end": len(text), "score": {"value": v, "type": "PROBABILITY"}}],
                        "summaryScore": {"value": v, "type": "PROBABILITY"}}},
                    "languages": ["en"], "detectedLanguages": ["en"]}).encode())

            def _error(self, code, status, message):
                self._raw(code, json.dumps({"error": {"code": code, "message": message, "status": status}}).encode())

        self._listen(Handler, "/v1alpha1/comments:analyze")
