"""Run the app: bind the socket, serve with uvicorn, and on Ctrl-C / SIGTERM drain before exiting.

Connections are bounded by uvicorn's own settings and `connections.py` (`Limits`: open connections, the
deadline for a request head, keep-alive); every log line is rate-limited.

Draining: uvicorn stops accepting connections, lets every request in flight finish (streams included:
sse-starlette's own stop-streams-at-shutdown is turned off) for up to `drain_timeout` seconds, then
cancels what is left; the decode thread stops last.
"""

from __future__ import annotations

import signal
import socket
import sys

from ..errors import LlamalabError
from .app import Settings, create_app
from .pool import Budget
from .connections import MAX_HEAD, Limits, open_files_for, quiet_floods, timed_protocol


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LlamalabError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --host/--port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(model, tokenizer, settings: Settings, sock: socket.socket, *, drain_timeout: float = 30.0,
          log_level: str = "info", limits: Limits = Limits(), vision=None, budget: Budget = Budget(),
          load_options: dict | None = None) -> None:
    """Serve on `sock` (from `bind`, done before the slow model load so a busy port fails at once); vision: a
    LLaVA checkpoint's image input (`runtime.vision.image_input`). With model None: every model of the library
    by name, loaded on demand within `budget` (`create_app`)."""
    import uvicorn
    from sse_starlette.sse import AppStatus

    open_files_for(limits)
    app = create_app(model, tokenizer, settings, vision=vision, budget=budget, load_options=load_options)
    AppStatus.disable_automatic_graceful_drain()  # streams end on their own while the server drains
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=drain_timeout,
                            timeout_keep_alive=limits.keep_alive, access_log=log_level == "debug",
                            limit_concurrency=limits.max_connections, http=timed_protocol(limits.header_timeout),
                            h11_max_incomplete_event_size=MAX_HEAD, server_header=False)
    quiet_floods(log_level)  # after uvicorn.Config, which sets up its loggers
    address = sock.getsockname()
    shown = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
    what = settings.name if model is not None else "the model library"
    slots = app.state.service.context if model is not None else f"up to {settings.context}"
    print(f"llamalab serve: {what} on http://{shown}:{address[1]}/ "
          f"({settings.max_batch} slots x {slots} tokens, queue {settings.max_queue}"
          f"{', API key required' if settings.api_key else ''}; Ctrl-C drains and stops)",
          file=sys.stderr, flush=True)
    # uvicorn re-raises the signal it drained on once it is done; a drained server exits 0 instead
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("llamalab serve: stopped", file=sys.stderr, flush=True)
