"""The models a server answers for: one given by path (`Fixed`), or every model of the library by name (`Pool`).

    services = Pool(settings, metrics, load=..., max_loaded=Budget(count=1))
    async with services.use("smol", keep_alive=300) as service:   # loads on first use; 404 naming the models
        ...                                                         # (not unloaded before the block ends)
    services.loaded()                                         # [Loaded(name, service, expires, size), ...]

A library model loads on its first request (one load, however many requests wait for it: a lock per model),
stays loaded for its `keep_alive` (per request; ollama's durations; 0 = unload once idle, negative = for ever;
default 5 minutes) and is unloaded by a reaper once it expired and has nothing running. `--max-loaded` bounds
the models held at once (a count, or bytes: weights plus KV cache); a model that needs the room evicts the
least recently used idle one, and waits while every loaded one is busy.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from .. import library
from ..errors import LlamalabError
from .protocol import APIError

log = logging.getLogger("llamalab.serve")
DEFAULT_KEEP_ALIVE = 300.0
UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


@dataclass(frozen=True)
class Budget:
    """How much may be loaded at once: a count of models, or bytes (None: no bound)."""
    count: int | None = None
    bytes: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> "Budget":
        """`--max-loaded`: "2" (models) or "1.5GB" / "800MiB" (bytes)."""
        if text is None:
            return cls()
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in UNITS or (not m.group(2) and "." in m.group(1)) or float(m.group(1)) <= 0:
            raise LlamalabError(f"--max-loaded {text!r}: give a count of models (e.g. 2) or a size (e.g. 1.5GB, "
                                "800MiB), more than 0")
        if not m.group(2):
            return cls(count=int(m.group(1)))
        return cls(bytes=int(float(m.group(1)) * UNITS[m.group(2).lower()]))


@dataclass(eq=False)
class Loaded:
    name: str
    service: object
    size: int                      # bytes: weights and KV cache
    expires: float | None = None   # time.time() when it may go; None: never
    used: float = field(default_factory=time.monotonic)
    pending: int = 0               # requests between `use` and their job's submission (or their end)

    def busy(self) -> bool:
        load = self.service.scheduler.load()
        return bool(load["running"] or load["waiting"]) or self.pending > 0


def resident_bytes(model, engine) -> int:
    """What a loaded model holds: its parameters and buffers (quantized codes included) and the KV cache."""
    tensors = list(model.parameters()) + list(model.buffers()) + list(engine.cache.k) + list(engine.cache.v)
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}
    return sum(seen.values())


def release_memory() -> None:
    """Give freed memory back to the system (glibc keeps freed heap otherwise; CUDA keeps its cache)."""
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Fixed:
    """`serve --model PATH`: one service, loaded before the server starts, held for good."""

    library = False

    def __init__(self, service):
        self.service = service
        self.expires: float | None = None  # what the last request's keep_alive asked (reported by /api/ps)

    @asynccontextmanager
    async def use(self, name: str | None, keep_alive: float | None = None) -> AsyncIterator[object]:
        if keep_alive is not None:
            self.expires = None if keep_alive < 0 else time.time() + keep_alive
        yield self.service

    def loaded(self) -> list[Loaded]:
        return [Loaded(self.service.settings.name, self.service, 0, self.expires)]

    def start(self, loop) -> None:
        self.service.scheduler.start(loop)

    async def stop(self) -> None:
        self.service.scheduler.stop()


class Pool:
    """`serve` without --model: every library model by name, loaded on demand (see the module's doc)."""

    library = True

    def __init__(self, load: Callable[[str], object], budget: Budget = Budget(),
                 estimate: Callable[[str], int] = lambda name: 0, reap_every: float = 0.25):
        self._load, self.budget, self._estimate, self.reap_every = load, budget, estimate, reap_every
        self._loaded: dict[str, Loaded] = {}
        self._loading: dict[str, int] = {}  # models being loaded → the bytes they were expected to take
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task | None = None
        self._loop = None

    def name_of(self, name: str | None) -> str:
        """The library's full name for a requested one; 400 / 404 naming the models that exist."""
        have = library.names()
        listed = ", ".join(have) or "none (add one with `llamalab models import PATH --name NAME`)"
        if not name:
            raise APIError(400, f"model: a model name is required; the library has: {listed}", param="model")
        try:
            full = library.full_name(name)
        except LlamalabError:
            full = None
        if full not in have:
            raise APIError(404, f"model {name!r} not found; the library has: {listed}", param="model",
                           code="model_not_found")
        return full

    @asynccontextmanager
    async def use(self, name: str | None, keep_alive: float | None = None) -> AsyncIterator[object]:
        full = self.name_of(name)
        keep = DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive
        async with self._locks.setdefault(full, asyncio.Lock()):  # one load, whoever else waits for it
            entry = self._loaded.get(full) or await self._bring(full)
            entry.pending += 1
        entry.used = time.monotonic()
        entry.expires = None if keep < 0 else time.time() + keep
        try:
            yield entry.service
        finally:
            entry.pending -= 1

    async def _bring(self, full: str) -> Loaded:
        self._loading[full] = await self._make_room(full)  # counted against the budget while it loads
        try:
            service = await run_in_threadpool(self._load, full)
        except LlamalabError as e:
            raise APIError(500, f"loading {full} failed: {e}") from None
        finally:
            self._loading.pop(full, None)
        service.scheduler.start(self._loop or asyncio.get_running_loop())
        entry = self._loaded[full] = Loaded(full, service, resident_bytes(service.model, service.scheduler.engine))
        log.info("loaded %s (%.0f MB)", full, entry.size / 1e6)
        return entry

    async def _make_room(self, full: str) -> int:
        """Evict the least recently used idle models until `full` fits the budget; wait while all are busy (or
        loading). The bytes it is expected to take."""
        need = self._estimate(full) if self.budget.bytes else 0
        while (self._loaded or self._loading) and not self._fits(need):
            idle = sorted((e for e in self._loaded.values() if not e.busy()), key=lambda e: e.used)
            if idle:
                await self.unload(idle[0].name, reason=f"to make room for {full}")
            else:
                await asyncio.sleep(0.05)
        return need

    def _fits(self, need: int) -> bool:
        b = self.budget
        if b.count is not None and len(self._loaded) + len(self._loading) + 1 > b.count:
            return False
        held = sum(e.size for e in self._loaded.values()) + sum(self._loading.values())
        return b.bytes is None or held + need <= b.bytes

    async def unload(self, name: str, reason: str = "idle") -> None:
        entry = self._loaded.pop(name, None)
        if entry is None:
            return
        await run_in_threadpool(entry.service.scheduler.stop)
        entry.service = None
        await run_in_threadpool(release_memory)
        log.info("unloaded %s (%s)", name, reason)

    def loaded(self) -> list[Loaded]:
        return sorted(self._loaded.values(), key=lambda e: e.name)

    def start(self, loop) -> None:
        self._loop = loop
        self._reaper = loop.create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.reap_every)
            now = time.time()
            for entry in list(self._loaded.values()):
                lock = self._locks.get(entry.name)
                if entry.expires is not None and entry.expires <= now and not entry.busy() and \
                        not (lock and lock.locked()):
                    try:
                        await self.unload(entry.name, reason="keep_alive expired")
                    except Exception:  # never let the reaper die: the next round tries again
                        log.exception("unloading %s failed", entry.name)

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for name in list(self._loaded):
            await self.unload(name, reason="shutting down")
