"""A request's updates → OpenAI's response bodies: chat.completion(.chunk) and text_completion."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from .scheduler import Job, Update


@dataclass
class Choice:
    """Everything one choice produced (for non-streaming answers)."""

    text: list[str] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, update: Update) -> None:
        self.text.append(update.text)
        self.tokens += update.tokens
        self.logprobs += update.logprobs
        self.finish_reason = update.finish_reason or self.finish_reason


class Formatter:
    """Bodies for one request to /v1/chat/completions (chat=True) or /v1/completions."""

    def __init__(self, *, chat: bool, model: str, tokenizer, logprobs: bool):
        self.chat, self.model, self.tokenizer, self.logprobs = chat, model, tokenizer, logprobs
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._offsets: dict[int, int] = {}  # completions' text_offset per choice, when streaming

    def _envelope(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    # --------------------------------------------------------------------------------------- streaming
    def role_chunk(self, choices: int) -> dict | None:
        """Chat streams open each choice with the assistant role."""
        if not self.chat:
            return None
        return {**self._envelope(True), "choices": [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            for i in range(choices)]}

    def chunk(self, update: Update) -> dict:
        logprobs = self._logprobs(update.logprobs, update.index) if self.logprobs else None
        finish = update.finish_reason
        if self.chat:
            delta = {"content": update.text} if update.text else {}
            choice = {"index": update.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": update.index, "text": update.text, "logprobs": logprobs, "finish_reason": finish}
        return {**self._envelope(True), "choices": [choice]}

    def usage_chunk(self, job: Job) -> dict:
        return {**self._envelope(True), "choices": [], "usage": usage(job)}

    # ----------------------------------------------------------------------------------- whole answers
    def answer(self, job: Job, choices: list[Choice]) -> dict:
        out = []
        for i, c in enumerate(choices):
            logprobs = self._logprobs(c.logprobs, i) if self.logprobs else None
            if self.chat:
                out.append({"index": i, "message": {"role": "assistant", "content": "".join(c.text)},
                            "logprobs": logprobs, "finish_reason": c.finish_reason})
            else:
                out.append({"index": i, "text": "".join(c.text), "logprobs": logprobs,
                            "finish_reason": c.finish_reason})
        return {**self._envelope(False), "choices": out, "usage": usage(job)}

    # --------------------------------------------------------------------------------------- logprobs
    def _token(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _logprobs(self, entries, index: int) -> dict:
        """OpenAI's chat `{"content": [...]}` or the completions `{"tokens", "token_logprobs", ...}` form.
        `entries` are the engine's (log-probability, [(token, log-probability), ...]) per token; the
        token itself is the first of `tokens` it was recorded with."""
        if self.chat:
            return {"content": [self._chat_entry(token, lp, top) for token, lp, top in entries]}
        tokens = [self._token(t) for t, _, _ in entries]
        offsets = []
        start = self._offsets.get(index, 0)
        for text in tokens:
            offsets.append(start)
            start += len(text)
        self._offsets[index] = start
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [{self._token(t): v for t, v in top} for _, _, top in entries],
                "text_offset": offsets}

    def _chat_entry(self, token: int, lp: float, top) -> dict:
        text = self._token(token)
        return {"token": text, "logprob": lp, "bytes": list(text.encode()),
                "top_logprobs": [{"token": (s := self._token(t)), "logprob": v, "bytes": list(s.encode())}
                                 for t, v in top]}


def usage(job: Job) -> dict:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens}
