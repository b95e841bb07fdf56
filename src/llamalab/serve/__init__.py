"""`llamalab serve`: an OpenAI-compatible HTTP server on the decoding engine, with continuous batching.

    scheduler.py  one decode thread driving `Engine.step()`; requests join and leave between steps
    protocol.py   OpenAI's request bodies (validated) and error bodies
    responses.py  updates → chat.completion / text_completion bodies and stream chunks
    app.py        the FastAPI routes: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics, /
    guard.py      Host check, body size and time bounds, request counting, in front of every route
    connections.py  connection limits, the request-head deadline, allowed Host names, rate-limited logs, API key
    metrics.py    Prometheus metrics
    page.py       the chat page (chat.html) and its Content-Security-Policy
    server.py     bind, run uvicorn, drain on Ctrl-C / SIGTERM

Needs the `serve` extra (FastAPI, uvicorn, sse-starlette, prometheus-client).
"""
