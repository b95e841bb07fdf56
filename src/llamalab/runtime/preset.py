"""A library model's Modelfile values as defaults: the sampling options and the conversation a request starts
from. A request's own values win; the preset fills what it leaves out (`llamalab run`, the server)."""

from __future__ import annotations

# Modelfile PARAMETER → the sampling keyword `generate`/`converse` take (num_ctx sizes the KV cache instead)
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed",
            "repeat_penalty": "repetition_penalty", "num_predict": "max_new_tokens", "stop": "stop"}


def sampling(preset: dict, given: dict) -> dict:
    """`given` (keyword → value; None = not given) over the preset's parameters, in `generate`'s names."""
    params = preset.get("parameters") or {}
    merged = {SAMPLING[k]: v for k, v in params.items() if k in SAMPLING}
    if merged.get("max_new_tokens", 1) < 1:  # ollama's num_predict -1 / -2: no limit but the context
        merged.pop("max_new_tokens")
    return {**merged, **{k: v for k, v in given.items() if v is not None}}


def conversation(preset: dict, messages: list[dict]) -> list[dict]:
    """`messages` after the preset's system prompt (a system message of the request's own replaces it) and its
    opening messages."""
    messages, head = list(messages), list(preset.get("messages") or [])
    if messages and messages[0].get("role") == "system":
        return messages[:1] + head + messages[1:]
    if preset.get("system") is not None and not any(m.get("role") == "system" for m in head):
        head.insert(0, {"role": "system", "content": preset["system"]})
    return head + messages
