"""A request's updates → OpenAI's response bodies: chat.completion(.chunk) and text_completion.

A chat request with tools: each choice's answer is parsed for tool calls (`tools.parse`); one that calls
gets `tool_calls` (content null unless text stood beside the calls) and finish_reason "tool_calls". Streamed,
such a choice's text is held back and sent whole at its end: one delta with the content or with every
tool call complete (index, id, type, name, arguments), then the finish_reason.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from . import tools as tool_calls
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

    def __init__(self, *, chat: bool, model: str, tokenizer, logprobs: bool, tools: list[dict] | None = None):
        self.chat, self.model, self.tokenizer, self.logprobs = chat, model, tokenizer, logprobs
        self.tools = tools if chat else None
        self._held: dict[int, list[str]] = {}  # with tools: each choice's text until it ends
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

    def chunk(self, update: Update) -> dict | None:
        """The chunk for an update (None: held back until the choice ends, with tools)."""
        logprobs = self._logprobs(update.logprobs, update.index) if self.logprobs else None
        finish = update.finish_reason
        if self.tools:
            self._held.setdefault(update.index, []).append(update.text)
            if finish is None and not logprobs:
                return None
        if self.tools and finish is not None:
            message, finish = self._message("".join(self._held.pop(update.index)), finish)
            delta = {k: v for k, v in message.items() if k != "role" and v}
            if "tool_calls" in delta:
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
            choice = {"index": update.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        elif self.chat:
            delta = {"content": update.text} if update.text and not self.tools else {}
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
                message, finish = self._message("".join(c.text), c.finish_reason)
                out.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
            else:
                out.append({"index": i, "text": "".join(c.text), "logprobs": logprobs,
                            "finish_reason": c.finish_reason})
        return {**self._envelope(False), "choices": out, "usage": usage(job)}

    def _message(self, text: str, finish: str | None) -> tuple[dict, str | None]:
        """The assistant message for a choice's text, and its finish_reason: tool calls when it made some."""
        if self.tools and finish == "stop":
            content, calls = tool_calls.parse(text, self.tools)
            if calls:
                return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": text}, finish

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
