"""`llamalab run NAME [PROMPT]`: ollama's `run` over `runtime.chat.converse` (the chat command's loop), with
the model's Modelfile values as defaults. With a prompt: one answer, then the end; without: a conversation."""

from __future__ import annotations

from collections.abc import Callable

from ..runtime import load_runnable
from ..runtime.chat import converse
from ..runtime.preset import conversation, sampling

DEFAULTS = {"max_new_tokens": 512, "temperature": 0.0}  # llamalab's CLI defaults: greedy unless told otherwise


def run(name: str, read: Callable[[], str | None], write: Callable[[str], object], *, device=None, dtype=None,
        threads: int | None = None, context: int | None = None, **given) -> None:
    """Load `name` (a library name or a path) and converse: `read()` gives the user's lines (None: the end).
    `given`: sampling keywords (None: the Modelfile's value, else DEFAULTS)."""
    rt = load_runnable(name, device=device, dtype=dtype, threads=threads)
    options = {**DEFAULTS, **sampling(rt.preset, given)}
    num_ctx = (rt.preset.get("parameters") or {}).get("num_ctx")
    context = min(context or num_ctx or 4096, rt.args.max_seq_len)
    opening = conversation(rt.preset, [])
    system = opening[0]["content"] if opening and opening[0]["role"] == "system" else None
    converse(rt, read, write, context=context, system=system, messages=opening[1 if system is not None else 0:],
             stop=tuple(options.pop("stop", ())), **options)
