"""The one synchronous batch driver over the engine: every job decodes on the engine's slots, a waiting job
joining as soon as another finishes (continuous batching, vLLM's `LLM.generate` beside its server).

    seqs = run_batch(engine, [Job(ids, max_new_tokens=64, stop_ids=tok.stop_ids), ...], tokenizer=tok)

eval's generation, self-instruct's and judge's local models and `generate --input` run on `run_batch`; the
server's threaded scheduler admits with the same `admit` and advances with the same `Engine.step`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..generate import Engine, Sequence
from ..grammar import Grammar
from ..sampling import Sampler


@dataclass(frozen=True)
class Job:
    """One sequence to decode: its prompt ids and how its tokens are picked and where it stops."""
    prompt: list[int]
    max_new_tokens: int
    sampler: Sampler | None = None
    generator: torch.Generator | None = None
    stop_ids: Iterable[int] = ()
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    grammar: Grammar | None = None  # the tokens must follow it (`grammar.compile_json`)
    embeddings: torch.Tensor | None = None  # the prompt's input rows when images are spliced in (LLaVA)


def admit(engine: Engine, job: Job, tokenizer=None) -> Sequence:
    """Prefill `job` into a free slot of `engine` and sample its first token (`Engine.add`)."""
    return engine.add(job.prompt, max_new_tokens=job.max_new_tokens, sampler=job.sampler, generator=job.generator,
                      stop_ids=job.stop_ids, stop=job.stop, tokenizer=tokenizer, top_logprobs=job.top_logprobs,
                      grammar=job.grammar, embeddings=job.embeddings)


def run_batch(engine: Engine, jobs: list[Job], *, tokenizer=None, order: Iterable[int] | None = None,
              on_finish: Callable[[Sequence], None] | None = None) -> list[Sequence]:
    """Decode every job (in `order`, default as given: the first free slot takes the next) and return the
    finished sequences in the jobs' order; `on_finish` hears of each as it finishes (a progress bar)."""
    pending = deque(range(len(jobs)) if order is None else order)
    out: list[Sequence | None] = [None] * len(jobs)
    owner: dict[int, int] = {}  # id(sequence) → job index

    def finish(seq: Sequence) -> None:
        if seq.done:
            out[owner.pop(id(seq))] = seq
            engine.release(seq)
            if on_finish:
                on_finish(seq)

    while pending or owner:
        while pending and engine.free_slots():
            i = pending.popleft()
            seq = admit(engine, jobs[i], tokenizer)
            owner[id(seq)] = i
            finish(seq)
        for seq in engine.step():
            finish(seq)
    return out
