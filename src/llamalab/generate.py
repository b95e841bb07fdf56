"""Autoregressive decoding with a KV cache: one batched prefill, then one token per step.

    generate(model, prompts, max_new_tokens=64)           # batch → new token ids per prompt
    stream(model, prompt, max_new_tokens=64)              # one prompt → token ids as they come
    stream_text(stream(...), tokenizer, stop=["\\n\\n"])   # → text pieces, complete UTF-8 only

Prompts of different lengths are left-padded: pad slots are hidden by the attention mask and every
row gets its own rotary positions, so a row decodes exactly as it would alone. Rows finish
individually on a stop id (the stop id is the last token returned, as in HF `generate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from .errors import LlamalabError
from .model import KVCache, Transformer
from .sampling import Sampler


def _check_prompts(model: Transformer, prompts: list[list[int]], max_new_tokens: int, reserved: int,
                   truncate: str | None) -> list[list[int]]:
    limit = model.args.max_seq_len
    if max_new_tokens < 1:
        raise LlamalabError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise LlamalabError("every prompt needs at least one token (e.g. the BOS token)")
    bad = [t for p in prompts for t in p if not 0 <= t < model.args.vocab_size]
    if bad:
        raise LlamalabError(f"token id {bad[0]} is outside the model's vocabulary of {model.args.vocab_size}")
    room = limit - max_new_tokens - reserved
    longest = max(len(p) for p in prompts)
    if longest <= room:
        return prompts
    if truncate == "left" and room > 0:
        return [p[-room:] for p in prompts]
    if truncate not in (None, "left"):
        raise LlamalabError(f"unknown truncation policy {truncate!r}; use 'left' or none")
    raise LlamalabError(
        f"prompt of {reserved + longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's context "
        f"of {limit} tokens; shorten the prompt, lower max_new_tokens, or truncate='left' (drops the oldest tokens)")


def new_cache(model: Transformer, batch_size: int, max_len: int) -> KVCache:
    """An empty KV cache for `model`'s weights' device and dtype. Under tensor parallelism (DTensor weights
    sharded over a mesh of tp processes) a process caches only the 1/tp of the key/value heads it computes."""
    w = model.tok_embeddings.weight
    tp = w.device_mesh.size() if hasattr(w, "device_mesh") else 1
    return KVCache.allocate(model.args, batch_size, max_len, w.device, w.dtype, kv_heads=model.args.kv_heads // tp)


@torch.inference_mode()
def _decode(model: Transformer, prompts: list[list[int]], sampler: Sampler, *, max_new_tokens: int,
            stop_ids: Iterable[int] = (), generator: torch.Generator | None = None,
            cache: KVCache | None = None, prefix: list[int] = ()) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,) int64, once per step; rows already stopped yield -1.

    `cache`/`prefix`: slots [0, len(prefix)) of `cache` already hold the keys/values of `prefix`, which
    comes before the (single) prompt (chat). The token yielded last is never fed to the model.
    """
    weight = model.tok_embeddings.weight
    device, B = weight.device, len(prompts)
    lengths = [len(p) for p in prompts]
    start = len(prefix)
    T, end = max(lengths), start + max(lengths) + max_new_tokens
    tokens = torch.zeros(B, T, dtype=torch.long)
    for row, p in enumerate(prompts):
        tokens[row, T - len(p):] = torch.tensor(p)
    tokens = tokens.to(device)
    pad = torch.tensor([T - n for n in lengths], device=device)[:, None]  # left padding of each row
    if cache is None:
        cache = new_cache(model, B, end)

    positions = mask = step_mask = step_positions = None
    if min(lengths) < T:  # left padding: hide the pad slots, count positions from each row's first token
        valid = torch.arange(end, device=device)[None] >= pad
        positions = (valid[:, :T].cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        # a pad query sees itself, so no softmax row is empty (an empty one would give NaN)
        mask = (causal & valid[:, None, None, :T]) | torch.eye(T, dtype=torch.bool, device=device)
        step_mask, step_positions = valid[:, None, None, :], positions[:, -1:] + 1
    logits = model(tokens, cache=cache, pos=start, positions=positions, mask=mask, last_only=True)[:, -1]

    seen = None
    if sampler.uses_history:  # which tokens each row has seen, for the repetition penalty
        counts = torch.zeros(B, logits.shape[-1], dtype=torch.long, device=device)
        in_prompt = torch.arange(T, device=device)[None] >= pad
        counts.scatter_add_(1, tokens, in_prompt.long())
        counts[:, list(prefix)] += 1
        seen = counts > 0
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for i in range(max_new_tokens):
        nxt = sampler(logits, seen, generator).masked_fill(finished, -1)
        yield nxt
        finished |= torch.isin(nxt, stop)
        if i == max_new_tokens - 1 or bool(finished.all()):
            return
        feed = nxt.clamp(min=0)[:, None]
        if seen is not None:
            seen.scatter_(1, feed, True)
        pos = start + T + i
        if step_mask is None:
            logits = model(feed, cache=cache, pos=pos, last_only=True)[:, -1]
        else:
            logits = model(feed, cache=cache, pos=pos, positions=step_positions + i,
                           mask=step_mask[..., :pos + 1], last_only=True)[:, -1]


def _setup(model, prompts, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed,
           truncate, reserved=0):
    sampler = Sampler(temperature, top_k, top_p, min_p, repetition_penalty)
    prompts = _check_prompts(model, [list(p) for p in prompts], max_new_tokens, reserved, truncate)
    generator = None
    if seed is not None:
        generator = torch.Generator(model.tok_embeddings.weight.device).manual_seed(seed)
    return sampler, prompts, generator


def generate(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             repetition_penalty: float = 1.0, stop_ids: Iterable[int] = (), seed: int | None = None,
             truncate: str | None = None) -> list[list[int]]:
    """New token ids for each prompt (ending with the stop id if one was sampled).

    temperature 0 = greedy. `seed` makes sampling reproducible. A prompt that does not fit in the
    context with max_new_tokens is an error unless truncate="left" (keep the most recent tokens).
    """
    sampler, prompts, generator = _setup(model, prompts, max_new_tokens, temperature, top_k, top_p, min_p,
                                         repetition_penalty, seed, truncate)
    out: list[list[int]] = [[] for _ in prompts]
    for nxt in _decode(model, prompts, sampler, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                       generator=generator):
        for row, t in enumerate(nxt.tolist()):
            if t >= 0:
                out[row].append(t)
    return out


def stream(model: Transformer, prompt: list[int], *, max_new_tokens: int, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
           repetition_penalty: float = 1.0, stop_ids: Iterable[int] = (), seed: int | None = None,
           truncate: str | None = None) -> Iterator[int]:
    """`generate` for one prompt, yielding each new token id as soon as it is sampled."""
    sampler, (prompt,), generator = _setup(model, [prompt], max_new_tokens, temperature, top_k, top_p, min_p,
                                           repetition_penalty, seed, truncate)
    for nxt in _decode(model, [prompt], sampler, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                       generator=generator):
        yield int(nxt[0])


class Session:
    """One growing token sequence (a conversation) and its KV cache: each `stream` call prefills only
    the part of the new prompt that differs from what the cache already holds."""

    def __init__(self, model: Transformer, max_len: int | None = None):
        self.model = model
        self.cache = new_cache(model, 1, max_len or model.args.max_seq_len)
        self.tokens: list[int] = []  # tokens whose keys/values are in the cache, in order

    def reset(self):
        self.tokens = []

    def stream(self, prompt: list[int], *, max_new_tokens: int, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
               repetition_penalty: float = 1.0, stop_ids: Iterable[int] = (),
               seed: int | None = None) -> Iterator[int]:
        reuse = 0
        for a, b in zip(self.tokens, prompt[:-1]):  # keep ≥ 1 new token to compute the next logits from
            if a != b:
                break
            reuse += 1
        if len(prompt) + max_new_tokens > self.cache.max_len:
            raise LlamalabError(f"the conversation ({len(prompt)} tokens) + max_new_tokens {max_new_tokens} "
                                f"no longer fits the context of {self.cache.max_len} tokens; start over (/reset)")
        sampler, (suffix,), generator = _setup(self.model, [prompt[reuse:]], max_new_tokens, temperature, top_k,
                                               top_p, min_p, repetition_penalty, seed, None, reserved=reuse)
        self.tokens = prompt[:reuse]
        generated: list[int] = []
        try:
            for nxt in _decode(self.model, [suffix], sampler, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                               generator=generator, cache=self.cache, prefix=prompt[:reuse]):
                generated.append(int(nxt[0]))
                yield generated[-1]
        finally:  # the last token yielded was never fed to the model
            self.tokens = list(prompt) + generated[:-1]


def split_stop(text: str, stops: Iterable[str], final: bool) -> tuple[str, str, bool]:
    """(text safe to emit, text held back as a possible stop-string start, whether a stop string was hit)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if hits:
        return text[:min(hits)], "", True
    if final:
        return text, "", False
    hold = max((j for s in stops for j in range(1, len(s)) if text.endswith(s[:j])), default=0)
    return text[:len(text) - hold], text[len(text) - hold:], False


def stream_text(tokens: Iterable[int], tokenizer, *, stop_ids: Iterable[int] = (),
                stop: Iterable[str] = ()) -> Iterator[str]:
    """Text of a token stream, yielded as soon as it is complete UTF-8. Ends before the first stop id
    or stop string; neither is part of the text."""
    stop_ids, stop = set(stop_ids), [s for s in stop if s]
    decoder = tokenizer.stream_decoder()
    held = ""
    for t in tokens:
        if t in stop_ids:
            break
        ready, held, hit = split_stop(held + decoder.push(t), stop, final=False)
        if ready:
            yield ready
        if hit:
            return
    ready, _, _ = split_stop(held + decoder.flush(), stop, final=True)
    if ready:
        yield ready


def decode_text(tokens: list[int], tokenizer, *, stop_ids: Iterable[int] = (), stop: Iterable[str] = ()) -> str:
    """Non-streaming `stream_text`: decode up to the first stop id, cut at the first stop string."""
    stop_ids = set(stop_ids)
    end = next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
    return split_stop(tokenizer.decode(tokens[:end]), stop, final=True)[0]
