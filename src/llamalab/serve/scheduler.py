"""Continuous batching: one decode thread drives the engine, requests join and leave between steps.

    scheduler = Scheduler(engine, tokenizer, max_queue=64, metrics=metrics)
    scheduler.start(loop)                 # the decode thread; updates come back on `loop`
    job = Job(prompts, params, n=2)       # one request: n sequences per prompt
    scheduler.submit(job)                 # QueueFull when the queue is full (the server's 429)
    async for update in job.updates():    # text / tokens / logprobs / finish_reason per choice
        ...
    scheduler.cancel(job)                 # the client went away: its slots are free before the next step

Each iteration of the thread: release the sequences of cancelled requests, prefill waiting sequences into
free slots (up to a token budget, so a burst of long prompts does not stall the running ones for long),
then one `Engine.step()` for every active slot, and hand each request what its sequences produced (the
admission and the step of `runtime.run_batch`, the synchronous driver, here on a thread). A request's
choices are independent sequences: choice i of a seeded request samples from its own generator seeded with
seed + i, so a seeded request is reproducible whatever else is in the batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from ..errors import LlamalabError
from ..generate import Engine, Sequence
from ..grammar import Grammar
from ..runtime import batch
from ..sampling import Sampler

log = logging.getLogger("llamalab.serve")

PREFILL_BUDGET = 512  # prompt tokens prefilled per iteration beyond the first waiting sequence


class QueueFull(Exception):
    """More sequences are waiting than the queue holds."""


@dataclass(frozen=True)
class Params:
    """What each sequence of a request asks of the engine."""

    max_tokens: int
    sampler: Sampler = Sampler()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_ids: frozenset = frozenset()
    top_logprobs: int | None = None  # None: no log-probabilities
    grammar: Grammar | None = None   # the tokens follow it (structured outputs, a required tool call)


@dataclass
class Update:
    """What one choice produced since its last update; `finish_reason` set on its last one."""

    index: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)  # (token, lp, top)
    finish_reason: str | None = None  # "stop" | "length" | "error"
    error: str | None = None


@dataclass(eq=False)
class Job:
    """One request: `n` sequences for each prompt (choice index = prompt index × n + j)."""

    prompts: list[list[int]]
    params: Params
    n: int = 1
    embeddings: list | None = None  # per prompt: its input rows (1, T, dim) when images are spliced in, or None
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None  # when the first token of any choice came out
    cancelled: bool = False
    completion_tokens: int = 0
    tools: list[dict] | None = None  # the request's tools: its answers are parsed for tool calls
    _events: asyncio.Queue = field(default_factory=asyncio.Queue)
    _open: int = 0  # choices not finished yet

    def __post_init__(self):
        self._open = len(self.prompts) * self.n

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def prompt_tokens(self) -> int:
        return sum(map(len, self.prompts))

    async def updates(self) -> AsyncIterator[Update]:
        """Every update of every choice, in order, until all have finished."""
        while self._open:
            update = await self._events.get()
            if update.finish_reason is not None:
                self._open -= 1
            yield update


@dataclass(eq=False)
class _Pending:
    job: Job
    index: int

    @property
    def prompt(self) -> list[int]:
        return self.job.prompts[self.index // self.job.n]

    @property
    def embeddings(self):
        return self.job.embeddings[self.index // self.job.n] if self.job.embeddings else None


class Scheduler:
    """Continuous batching over one `Engine`: at most `engine.max_batch` sequences decode together, at
    most `max_queue` more wait for a slot."""

    def __init__(self, engine: Engine, tokenizer, *, max_queue: int, metrics=None):
        self.engine, self.tokenizer, self.max_queue, self.metrics = engine, tokenizer, max_queue, metrics
        self._cond = threading.Condition()
        self._waiting: deque[_Pending] = deque()
        self._outstanding = 0  # sequences submitted and not finished (waiting or running)
        self._running: dict[int, tuple[Sequence, _Pending]] = {}  # id(seq) → ...; decode thread only
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------ called from the event loop
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="llamalab-decode", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def capacity(self) -> int:
        """Sequences the server holds at once: one per slot, plus the queue."""
        return self.engine.max_batch + self.max_queue

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._outstanding + job.choices > self.capacity:
                raise QueueFull(f"the server is busy ({self._outstanding} sequences running or queued, "
                                f"room for {self.capacity}); retry later")
            self._outstanding += job.choices
            self._waiting.extend(_Pending(job, i) for i in range(job.choices))
            self._gauge_queue()
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Drop a request: its waiting sequences now, its running ones before the next step."""
        with self._cond:
            if job.cancelled or not job._open:
                return
            job.cancelled = True
            kept = deque(p for p in self._waiting if p.job is not job)
            self._outstanding -= len(self._waiting) - len(kept)
            self._waiting = kept
            self._gauge_queue()
            self._cond.notify()

    def load(self) -> dict:
        with self._cond:
            waiting = len(self._waiting)
            return {"running": self._outstanding - waiting, "waiting": waiting}

    # ------------------------------------------------------------------------------ the decode thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._running):
                    self._cond.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            out: list[tuple[Job, Update]] = []
            try:
                self._release_cancelled()
                for pending in admitted:
                    self._start(pending, out)
                if self._running:
                    self._step(out)
            except Exception as e:  # a bug or out of memory: fail what is running, keep serving
                log.exception("decode step failed")
                self._fail_running(out, f"{type(e).__name__}: {e}")
            self._deliver(out)
        for seq, pending in list(self._running.values()):
            self._finish(seq, pending)

    def _admit(self) -> list[_Pending]:
        """Waiting sequences that get a slot this iteration (under the lock)."""
        free = self.engine.max_batch - len(self._running)
        admitted, budget = [], PREFILL_BUDGET
        while self._waiting and len(admitted) < free:
            prompt_len = len(self._waiting[0].prompt)
            if admitted and prompt_len > budget:
                break
            budget -= prompt_len
            admitted.append(self._waiting.popleft())
        self._gauge_queue()
        return admitted

    def _start(self, pending: _Pending, out: list) -> None:
        job, p = pending.job, pending.job.params
        if job.cancelled:
            with self._cond:
                self._outstanding -= 1
            return
        seq = None
        try:
            generator = None
            if p.seed is not None:
                generator = torch.Generator(self.engine.device).manual_seed(p.seed + pending.index)
            seq = batch.admit(self.engine, batch.Job(pending.prompt, p.max_tokens, p.sampler, generator, p.stop_ids,
                                                     p.stop, p.top_logprobs, p.grammar,
                                                     pending.embeddings), self.tokenizer)
            self._running[id(seq)] = (seq, pending)
            if self.metrics:
                self.metrics.prompt_tokens.inc(len(pending.prompt))
            out.append((job, self._update(seq, pending)))
        except Exception as e:  # the request was checked before it was queued: this fails that sequence only
            self._failed(pending, seq, e, out)
            return
        if seq.done:
            self._finish(seq, pending)

    def _step(self, out: list) -> None:
        stepped = self.engine.step()  # a failure here is the whole batch's (`_run` fails what is running)
        if self.metrics:
            self.metrics.observe_step(len(stepped))
        for seq in stepped:
            pending = self._running[id(seq)][1]
            try:
                out.append((pending.job, self._update(seq, pending)))
            except Exception as e:
                self._failed(pending, seq, e, out)
                continue
            if seq.done:
                self._finish(seq, pending)

    def _failed(self, pending: _Pending, seq: Sequence | None, e: Exception, out: list) -> None:
        """One sequence failed: its request gets an error, its slot is given back, the batch goes on."""
        message = e if isinstance(e, LlamalabError) else f"{type(e).__name__}: {e}"
        log.warning("a sequence failed (its request gets an error, the others go on): %s", message)
        out.append((pending.job, Update(pending.index, finish_reason="error", error=str(message))))
        if seq is not None and id(seq) in self._running:
            self._finish(seq, pending)
        else:
            with self._cond:
                self._outstanding -= 1

    def _update(self, seq: Sequence, pending: _Pending) -> Update:
        """The update for the token the sequence just got (or its error: the engine failed it alone)."""
        job = pending.job
        if seq.error is not None:
            log.warning("a sequence failed (its request gets an error, the others go on): %s", seq.error)
            return Update(pending.index, finish_reason="error", error=seq.error)
        job.completion_tokens += 1
        if job.first_token is None:
            job.first_token = time.perf_counter()
            if self.metrics:
                self.metrics.ttft.observe(job.first_token - job.submitted)
        if self.metrics:
            self.metrics.generation_tokens.inc()
        token = seq.tokens[-1]
        logprobs = [(token, *seq.logprobs[-1])] if seq.top_logprobs is not None else []
        if token in seq.stop_ids:
            logprobs = []  # the end-of-turn token is not part of the answer
        return Update(pending.index, seq.new_text, seq.tokens[-1:], logprobs, seq.finish_reason)

    def _finish(self, seq: Sequence, pending: _Pending) -> None:
        self.engine.release(seq)
        del self._running[id(seq)]
        with self._cond:
            self._outstanding -= 1
        if seq.finish_reason == "cancelled" and self.metrics:
            self.metrics.cancelled.inc()

    def _release_cancelled(self) -> None:
        for seq, pending in list(self._running.values()):
            if pending.job.cancelled:
                self._finish(seq, pending)

    def _fail_running(self, out: list, message: str) -> None:
        for seq, pending in list(self._running.values()):
            out.append((pending.job, Update(pending.index, finish_reason="error", error=message)))
            self._finish(seq, pending)

    def _deliver(self, out: list[tuple[Job, Update]]) -> None:
        if self.metrics:
            self.metrics.running.set(len(self._running))
        live = [(job, u) for job, u in out if not job.cancelled]
        if live and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_put_all, live)
            except RuntimeError:  # the event loop is closed: the server is gone
                pass

    def _gauge_queue(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self._waiting))


def _put_all(updates: list[tuple[Job, Update]]) -> None:
    for job, update in updates:
        if not job.cancelled:
            job._events.put_nowait(update)
