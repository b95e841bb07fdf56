"""Text in, text out on a loaded model: what `llamalab generate --prompt` does, as a function."""

from __future__ import annotations

from collections.abc import Iterator

from ..generate import decode_text, generate, stream, stream_text
from ..grammar import compile_json
from .load import Runnable
from .vision import image_prompt


def complete(rt: Runnable, prompt: str, *, chat: bool = False, system: str | None = None, stop=(),
             ignore_eos: bool = False, truncate: str | None = None, streaming: bool = True, max_new_tokens: int,
             temperature: float = 0.0, seed: int | None = None, images=(), json_schema: dict | None = None,
             json_object: bool = False, **sampling) -> Iterator[str]:
    """The continuation of `prompt` as text pieces (streamed as decoded, or one piece at the end). chat: the
    prompt is a user turn (after `system`, if given) in the chat template; stop: strings that end the text;
    ignore_eos: decode past the end-of-text tokens; truncate="left": drop the oldest prompt tokens that do not
    fit. sampling: top_k, top_p, min_p, repetition_penalty as `generate.generate` takes them. images: paths
    (or bytes) of images for a LLaVA checkpoint, at the prompt's `<image>` marks (see `runtime.vision`).
    json_schema: the text is JSON valid against it; json_object: any JSON object (constrained decoding)."""
    grammar = compile_json(rt.tokenizer, json_schema, "--json-schema") if json_schema or json_object else None
    rows = None
    if images:
        ids, rows = image_prompt(rt, prompt, list(images), chat=chat, system=system)
    elif chat:
        ids = rt.encode_chat(([{"role": "system", "content": system}] if system else [])
                             + [{"role": "user", "content": prompt}])
    else:
        ids = rt.encode(prompt)
    stop_ids = () if ignore_eos else rt.tokenizer.stop_ids
    kw = dict(sampling, max_new_tokens=max_new_tokens, temperature=temperature,
              seed=rt.agree_seed(seed, temperature), stop_ids=stop_ids, truncate=truncate, compile=rt.compile,
              grammar=grammar)
    if not streaming and rows is None:
        yield decode_text(generate(rt.model, [ids], **kw)[0], rt.tokenizer, stop_ids=stop_ids, stop=stop)
        return
    pieces = stream_text(stream(rt.model, ids, embeddings=rows, **kw), rt.tokenizer, stop_ids=stop_ids, stop=stop)
    yield from pieces if streaming else ["".join(pieces)]
