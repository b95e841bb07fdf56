"""What a connection may cost the server: how long it may take to send a request head, how many may be open,
which `Host` names are answered, and how many log lines a flood of them writes.

    Limits(max_connections=512, header_timeout=10, body_timeout=30, keep_alive=5)
    allowed_hosts("127.0.0.1", extra=["my.box"])  # ("127.0.0.1", "localhost", "::1", "my.box"); None = any

uvicorn's own settings carry most of it (`limit_concurrency`: 503 beyond `max_connections`;
`timeout_keep_alive`; h11's bound on a request head's size); uvicorn has no deadline for the head itself,
so `timed_protocol` adds one: a connection that has not sent a complete head `header_timeout` seconds
after it opened (or after its previous answer) is closed. The body's deadline is `guard.Guard`'s.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import time
from dataclasses import dataclass

from ..errors import LlamalabError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MAX_HEAD = 64 * 1024  # bytes of request line + headers (h11's max_incomplete_event_size)


@dataclass(frozen=True)
class Limits:
    max_connections: int = 512   # open connections; a request beyond gets 503 (uvicorn's limit_concurrency)
    header_timeout: float = 10.0  # seconds to send a complete request head
    body_timeout: float = 30.0    # seconds to send the whole body once the head is in
    keep_alive: int = 5           # seconds an idle keep-alive connection is held

    def check(self) -> None:
        if self.max_connections < 1:
            raise LlamalabError(f"--max-connections must be >= 1, got {self.max_connections}")
        for flag, value in (("--header-timeout", self.header_timeout), ("--body-timeout", self.body_timeout),
                            ("--keep-alive", self.keep_alive)):
            if not 0 < value <= 3600:  # also refuses NaN
                raise LlamalabError(f"{flag} must be in (0, 3600] seconds, got {value}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(bound: str, extra=()) -> tuple[str, ...] | None:
    """The `Host` names answered: on a loopback address its own names (so a web page that rebinds a DNS name
    to 127.0.0.1 reaches nothing), plus `extra`; elsewhere any name, unless `extra` narrows it. `*` = any."""
    extra = tuple(h.lower().strip("[]") for h in extra)
    if "*" in extra or (not is_loopback(bound) and not extra):
        return None
    return tuple(dict.fromkeys((*LOOPBACK_NAMES, bound.lower().strip("[]"), *extra)))


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port (`[::1]:8000` → `::1`)."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def open_files_for(limits: Limits) -> None:
    """Raise this process's open-file limit well past what `max_connections` needs (up to the hard limit): the
    connections beyond it still take a file until they are answered 503 or their head deadline closes them, and
    once files run out accept() fails and nobody is answered. Refuse a --max-connections the system cannot give."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = limits.max_connections + 128  # the model's files, the listening socket, logs, ...
    want = max(4 * need, 8192)
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(target, soft), hard))
        if target < need:
            raise LlamalabError(f"--max-connections {limits.max_connections} needs {need} open files; this "
                                f"system allows {target} (ulimit -n): lower --max-connections")


def timed_protocol(header_timeout: float):
    """uvicorn's h11 protocol with a deadline on each request head (slowloris: a head sent a byte at a time)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer = None
            self._seen = None
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the next request's head has started
            super().data_received(data)
            if self.cycle is not self._seen:  # a complete head arrived
                self._seen = self.cycle
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.logger.info("closed a connection that sent no complete request head in %g s", header_timeout)
                self.transport.close()

    return TimedH11Protocol


class RateLimit(logging.Filter):
    """At most `burst` records of one kind (logger + message template) per `per` seconds; the first one let
    through after a drop says how many were dropped (a flood of bad connections writes a few lines, not 171k)."""

    def __init__(self, burst: int = 10, per: float = 10.0):
        super().__init__()
        self.burst, self.per = burst, per
        self._kinds: dict[tuple, list] = {}  # kind → [window start, records let through, records dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        kind = (record.name, record.msg if isinstance(record.msg, str) else type(record.msg))
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.per:
            dropped = state[2] if state else 0
            if len(self._kinds) > 1000:
                self._kinds.clear()
            self._kinds[kind] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.getMessage()} [{dropped} more like this were not logged]"
                record.args = None
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False


def quiet_floods(level: str) -> None:
    """Rate-limit every server log line: uvicorn's (its handlers), the app's and asyncio's (one handler each)."""
    limit = RateLimit()
    for name in ("uvicorn", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(limit)
    source = logging.getLogger("uvicorn").handlers
    for name in ("llamalab.serve", "asyncio"):
        logger = logging.getLogger(name)
        handler = logging.StreamHandler()
        if source:
            handler.setFormatter(source[0].formatter)
        handler.addFilter(limit)
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(level.upper())


def api_key(given: str | None, file: str | None, environ) -> str | None:
    """The key /v1 requires: --api-key-file's first line, else --api-key (visible to every local user in
    /proc/PID/cmdline: a warning says so), else $LLAMALAB_API_KEY; None = no key."""
    import sys
    from pathlib import Path

    if given is not None and file is not None:
        raise LlamalabError("give --api-key or --api-key-file, not both")
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise LlamalabError(f"cannot read the API key from --api-key-file {file}: "
                                f"{getattr(e, 'strerror', None) or e}") from None
        key = lines[0].strip() if lines else ""
        what = f"--api-key-file {file}"
    elif given is not None:
        print("llamalab serve: warning: --api-key is readable by every user of this machine (ps, /proc/PID/cmdline); "
              "prefer --api-key-file FILE or $LLAMALAB_API_KEY", file=sys.stderr, flush=True)
        key, what = given, "--api-key"
    else:
        key, what = environ.get("LLAMALAB_API_KEY") or None, "$LLAMALAB_API_KEY"
        if key is None:
            return None
    if not key or not key.isascii() or not key.isprintable() or " " in key:
        raise LlamalabError(f"the API key from {what} must be non-empty printable ASCII without spaces")
    return key
