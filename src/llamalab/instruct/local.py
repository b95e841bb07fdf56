"""A checkpoint as a teacher or judge: chat completions decoded in this process on the engine."""

from __future__ import annotations

import torch

from ..errors import LlamalabError
from ..runtime import Job, Runnable, run_batch
from ..sampling import Sampler
from .backends import Reply, Request


class LocalModel:
    """Chat completions from a loaded model (`runtime.load_runnable`) in this process: up to `max_batch`
    requests decode together on `runtime.run_batch`."""

    def __init__(self, runnable: Runnable, *, max_batch: int = 8, context: int = 2048):
        self.runnable, self.tokenizer = runnable, runnable.tokenizer
        self.engine = runnable.engine(max_batch=max_batch, max_len=min(context, runnable.args.max_seq_len))
        self.concurrency = max_batch
        self.name = runnable.name

    def chat(self, requests: list[Request]) -> list[Reply]:
        jobs = [self._job(self.runnable.encode_chat(r.messages), r) for r in requests]
        return [Reply(seq.text, seq.finish_reason) for seq in run_batch(self.engine, jobs, tokenizer=self.tokenizer)]

    def _job(self, prompt: list[int], r: Request) -> Job:
        room = self.engine.max_len - len(prompt) + 1
        if room < 1:
            raise LlamalabError(f"a prompt of {len(prompt)} tokens does not fit the context of {self.engine.max_len} "
                                f"tokens; raise --context")
        gen = None if r.seed is None else torch.Generator(self.engine.device).manual_seed(r.seed)
        return Job(prompt, min(r.max_tokens, room), Sampler(r.temperature, r.top_k, r.top_p, r.min_p,
                                                            r.repetition_penalty or 1.0),
                   gen, self.tokenizer.stop_ids, tuple(r.stop))
