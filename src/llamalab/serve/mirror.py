"""Serving under tensor parallelism (`torchrun --nproc_per_node N -m llamalab serve --tensor-parallel N`).

Rank 0 runs the HTTP server and the scheduler; every rank holds a shard of the weights and of the KV cache,
so every rank must run each engine operation rank 0 runs, in the same order, for their collectives (two
all-reduces per layer, the logits' all-gather) to meet. Rank 0's engine is wrapped in a `Leader`, which
sends a small JSON description of each operation to the other ranks before running it; they `follow`:

    {"op": "add", "prompt": [...], "slot": 0, "max_new_tokens": 64, "sampler": {...}, "seed": 7,
     "stop_ids": [...], "stop": [...], "text": true, "grammar": {"schema": {...} or null} or null}
    {"op": "step"}   {"op": "release", "slot": 0}   {"op": "beat"}   {"op": "stop"}

Every rank samples the same token: the logits are the same on every rank (the all-gather hands each the
same values) and each sequence samples from a generator seeded alike on every rank, with the request's own
seed or one rank 0 draws and sends; a constrained sequence's schema is sent too, and each rank compiles it
(the same grammar masks the same tokens everywhere). While the server is idle, rank 0 sends a heartbeat now and then so that
the others' wait never runs into the process group's timeout; when it shuts down it sends "stop".
"""

from __future__ import annotations

import dataclasses
import random
import signal
import threading

import torch

from ..errors import LlamalabError
from ..generate import Engine
from ..grammar import Grammar, compile_json
from ..sampling import Sampler
from ..tensor_parallel import share

HEARTBEAT = 60.0  # seconds between messages while idle (process-group timeouts are 10 to 30 minutes)


class Leader:
    """Rank 0's engine: the same interface as `Engine`; each operation is sent to the other ranks first.
    `add` takes a freshly seeded generator (or none): the other ranks seed theirs with its initial seed."""

    def __init__(self, engine: Engine, heartbeat: float = HEARTBEAT):
        self.engine = engine
        self._lock = threading.Lock()  # one operation (message + its collectives) at a time
        self._closed = threading.Event()
        self._busy = False
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat,), name="llamalab-tp-beat", daemon=True)
        self._beat.start()

    def __getattr__(self, name):  # max_batch, max_len, device, slots, ...
        return getattr(self.engine, name)

    def add(self, prompt: list[int], *, max_new_tokens: int, sampler: Sampler | None = None,
            generator: torch.Generator | None = None, stop_ids=(), stop=(), tokenizer=None, slot: int | None = None,
            top_logprobs: int | None = None, grammar: Grammar | None = None, embeddings: torch.Tensor | None = None):
        if embeddings is not None:  # the image rows would have to reach every rank: not built
            raise LlamalabError("images are not supported under tensor parallelism; "
                                "serve the vision model in one process")
        sampler = sampler or Sampler()
        if slot is None:
            slot = next((i for i, s in enumerate(self.engine.slots) if s is None), None)
        seed = None
        if generator is not None:
            seed = generator.initial_seed()
        elif not sampler.greedy:  # the global random state is not shared: give the sequence its own seed
            seed = random.getrandbits(63)
            generator = torch.Generator(self.engine.device).manual_seed(seed)
        with self._lock:
            self._send(op="add", prompt=[int(t) for t in prompt], slot=slot, max_new_tokens=max_new_tokens,
                       sampler=dataclasses.asdict(sampler), seed=seed, stop_ids=sorted(stop_ids), stop=list(stop),
                       text=tokenizer is not None, grammar=None if grammar is None else {"schema": grammar.schema})
            return self.engine.add(prompt, max_new_tokens=max_new_tokens, sampler=sampler, generator=generator,
                                   stop_ids=stop_ids, stop=stop, tokenizer=tokenizer, slot=slot,
                                   top_logprobs=top_logprobs, grammar=grammar)

    def step(self):
        with self._lock:
            self._send(op="step")
            return self.engine.step()

    def release(self, seq) -> None:
        with self._lock:
            if self.engine.slots[seq.slot] is seq:
                self._send(op="release", slot=seq.slot)
            self.engine.release(seq)

    def close(self) -> None:
        """Tell the other ranks to return (the server has stopped); idempotent."""
        with self._lock:
            if not self._closed.is_set():
                self._closed.set()
                self._send(op="stop")

    def _send(self, **message) -> None:
        self._busy = True
        share(message, self.engine.device)

    def _heartbeat(self, every: float) -> None:
        if self.engine.device.type == "cuda":
            torch.cuda.set_device(self.engine.device)
        while not self._closed.wait(every):
            with self._lock:
                if not self._busy and not self._closed.is_set():
                    share({"op": "beat"}, self.engine.device)
                self._busy = False


def follow(engine: Engine, tokenizer) -> None:
    """The loop of every rank but 0: run rank 0's engine operations on this rank's shard until "stop".
    Ctrl-C / SIGTERM are left to rank 0, which drains its requests (this rank decodes them too) and then
    sends "stop"; if rank 0 dies instead, the launcher ends this process."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        op = share(None, engine.device)
        kind = op["op"]
        if kind == "stop":
            return
        if kind == "step":
            engine.step()
        elif kind == "release":
            seq = engine.slots[op["slot"]]
            if seq is not None:
                engine.release(seq)
        elif kind == "add":
            seed = op["seed"]
            generator = None if seed is None else torch.Generator(engine.device).manual_seed(seed)
            try:
                grammar = op.get("grammar") and compile_json(tokenizer, op["grammar"]["schema"])
                engine.add(op["prompt"], max_new_tokens=op["max_new_tokens"], sampler=Sampler(**op["sampler"]),
                           generator=generator, stop_ids=op["stop_ids"], stop=op["stop"],
                           tokenizer=tokenizer if op["text"] else None, slot=op["slot"], grammar=grammar or None)
            except LlamalabError:  # rank 0 fails the same way, before any collective
                pass
