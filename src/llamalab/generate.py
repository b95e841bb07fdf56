"""The decoding engine: every token that `generate`, `chat`, `eval` and the server produce comes from here.

    Engine(model, max_batch=8)                  slots over one preallocated KV cache:
      seq = engine.add(prompt, max_new_tokens=64)   prefill into a free slot, sample the first token
      engine.step()                                 one more token for every active slot
      engine.release(seq)                           free the slot (any time)
    generate(model, prompts, max_new_tokens=64)     a batch → new token ids per prompt
    stream(model, prompt, max_new_tokens=64)        one prompt → token ids as they come
    Session(model)                                  a conversation: re-prefills only what changed
    TextStream / stream_text / decode_text          tokens → text, complete UTF-8 only, cut at stops

Each slot is one row of the cache, holding its sequence from cache position 0: no padding, and a
sequence decodes the same whether it is alone or others join and leave around it. A step feeds the
last token of every active slot at that slot's own position (the attention mask hides the other
slots' lengths) and reads the sampled tokens back with one host sync. Each sequence has its own
sampling settings, random generator, stop ids and stop strings, and ends with a `finish_reason`:
"stop" (a stop id — the last token returned, as in HF `generate` — or a stop string) or "length".

A sequence may carry a grammar (`grammar.Grammar`, e.g. a JSON schema): before each of its tokens is sampled,
the tokens the grammar does not allow next get logit -inf in its row alone, so constrained and free
sequences (and different schemas) decode in one batch. It ends with "stop" once the grammar is complete
(the model's stop token is then the only one allowed, or the grammar admits nothing more).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from . import threads
from .errors import LlamalabError
from .fast import compiled_step
from .grammar import Grammar, Matcher, allowed, new_bitmask
from .model import KVCache, Transformer
from .sampling import Sampler


class TextStream:
    """The text of a token stream as it is generated: complete UTF-8 only, ending before the first stop
    id or stop string (neither is part of the text). `push(token)` returns the text it completes (a
    possible stop-string start is held back); `finish()` the rest at the end; `stopped` once a stop hit."""

    def __init__(self, tokenizer, *, stop_ids: Iterable[int] = (), stop: Iterable[str] = ()):
        self.decoder = tokenizer.stream_decoder()
        self.stop_ids, self.stop = set(stop_ids), [s for s in stop if s]
        self.held, self.stopped = "", False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        if token in self.stop_ids:
            return self.finish()
        ready, self.held, self.stopped = split_stop(self.held + self.decoder.push(token), self.stop, final=False)
        return ready

    def finish(self) -> str:
        if self.stopped and not self.held:
            return ""
        ready, _, _ = split_stop(self.held + self.decoder.flush(), self.stop, final=True)
        self.held, self.stopped = "", True
        return ready


def split_stop(text: str, stops: Iterable[str], final: bool) -> tuple[str, str, bool]:
    """(text safe to emit, text held back as a possible stop-string start, whether a stop string was hit)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if hits:
        return text[:min(hits)], "", True
    if final:
        return text, "", False
    hold = max((j for s in stops for j in range(1, len(s)) if text.endswith(s[:j])), default=0)
    return text[:len(text) - hold], text[len(text) - hold:], False


@dataclass(eq=False)
class Sequence:
    """One sequence decoding in an engine slot: its settings and what it has produced so far."""

    prompt: list[int]
    max_new_tokens: int
    sampler: Sampler
    generator: torch.Generator | None
    stop_ids: frozenset
    slot: int
    text_stream: TextStream | None = None  # set when stop strings / text are wanted
    tokens: list[int] = field(default_factory=list)  # generated ids (a stop id, if hit, is the last)
    text: str = ""       # decoded text so far (with a tokenizer)
    new_text: str = ""   # the part of `text` the last token completed
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" (released before the end) | "error"
    error: str | None = None          # why it failed (finish_reason "error"): this sequence alone stops
    top_logprobs: int | None = None   # record log-probabilities: the chosen token's and the k best
    logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)  # per token
    matcher: Matcher | None = None    # the grammar its tokens must follow (None: free)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


def new_cache(model: Transformer, batch_size: int, max_len: int) -> KVCache:
    """An empty KV cache on `model`'s device, in its activations' dtype. Under tensor parallelism (DTensor
    weights) a process caches only the key/value heads it computes."""
    norm, wk = model.norm.weight, getattr(model.layers[0].attention.wk, "weight", None)  # quantized: no .weight
    kv_heads = wk.to_local().shape[0] // model.args.head_dim if hasattr(wk, "to_local") else None
    try:
        return KVCache.allocate(model.args, batch_size, max_len, norm.device, norm.dtype, kv_heads=kv_heads)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        args = model.args
        size = 2 * args.n_layers * batch_size * max_len * (kv_heads or args.kv_heads) * args.head_dim * norm.element_size()
        raise LlamalabError(f"not enough memory on {norm.device} for a KV cache of {batch_size} x {max_len} positions "
                            f"({size / 2**30:.1f} GiB); lower --context or the batch size") from None


class Engine:
    """Batched decoding over `max_batch` slots of one preallocated KV cache of `max_len` positions.

    compile=True runs the decode step through `torch.compile` (see `llamalab.fast`); the result is
    token-for-token the same as eager greedy decoding. isolate=True (a server): a sequence whose sampling or
    text decoding fails during `step` finishes with finish_reason "error" (and `error` set) while the others
    go on; by default the exception propagates.
    """

    def __init__(self, model: Transformer, *, max_batch: int = 1, max_len: int | None = None,
                 compile: bool = False, isolate: bool = False):
        self.isolate = isolate
        if max_batch < 1:
            raise LlamalabError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        args = model.args
        param = model.norm.weight
        self.device, self.dtype = param.device, param.dtype
        self.max_len = min(max_len or args.max_seq_len, args.max_seq_len)
        self.vocab_size = args.vocab_size
        # one scratch position past the end: idle rows write there, so a step never touches a slot's content
        self.cache = new_cache(model, max_batch, self.max_len + 1)
        self.lengths = [0] * max_batch  # tokens whose keys/values each slot holds
        self.slots: list[Sequence | None] = [None] * max_batch
        self.seen: torch.Tensor | None = None  # (max_batch, V) tokens seen, for repetition penalties
        self._views: dict[int, KVCache] = {}
        self._positions = torch.arange(self.max_len + 1, device=self.device)
        model.ensure_positions(self.max_len + 1)  # steps pass positions as a tensor: size the rotary table now
        self._forward = model
        if compile:
            self._forward = compiled_step(model)

    @property
    def max_batch(self) -> int:
        return len(self.slots)

    def warm_up(self) -> None:
        """Run the decode step once for a batch of one and once for two, so that a compiled step is compiled
        before the first real sequence arrives (a server's first clients do not wait for it)."""
        seqs = []
        for _ in range(min(2, self.free_slots())):
            seqs.append(self.add([0], max_new_tokens=2))
            self.step()
        for seq in seqs:
            self.release(seq)

    def free_slots(self) -> int:
        return sum(s is None for s in self.slots)

    def active(self) -> list[Sequence]:
        return [s for s in self.slots if s is not None and not s.done]

    # ------------------------------------------------------------------------------------------ slots
    @torch.inference_mode()
    def add(self, prompt: list[int], *, max_new_tokens: int, sampler: Sampler | None = None,
            generator: torch.Generator | None = None, stop_ids: Iterable[int] = (), stop: Iterable[str] = (),
            tokenizer=None, slot: int | None = None, cached: int = 0,
            top_logprobs: int | None = None, embeddings: torch.Tensor | None = None,
            grammar: Grammar | None = None) -> Sequence:
        """Prefill `prompt` into a free slot (or `slot`) and sample its first new token.

        cached: the slot's cache already holds the keys/values of prompt[:cached] (a conversation's
        earlier turns); only the rest is prefilled. stop strings need the tokenizer; with a tokenizer
        the sequence also carries its decoded text. top_logprobs=k (k >= 0) records, for every new
        token, its log-probability under the model (before any sampling control) and the k most
        probable (token, log-probability) pairs in `seq.logprobs`. embeddings: (1, len(prompt), dim), the
        prompt's input rows when they are not just its tokens' embeddings (LLaVA: images spliced in).
        grammar: the new tokens must follow it (see the module's docstring).
        """
        prompt = [int(t) for t in prompt]
        if embeddings is not None and tuple(embeddings.shape[:2]) != (1, len(prompt)):
            raise ValueError(f"embeddings of shape {tuple(embeddings.shape)} for a prompt of {len(prompt)} tokens")
        self._check(prompt, max_new_tokens, cached)
        threads.adapt(announce=True)  # the thread policy, in the thread that decodes, said before any token
        if slot is None:
            slot = next((i for i, s in enumerate(self.slots) if s is None), None)
            if slot is None:
                raise LlamalabError(f"all {self.max_batch} slots are busy; release one first")
        elif self.slots[slot] is not None:
            raise LlamalabError(f"slot {slot} is busy")
        stop = [s for s in stop if s]
        if stop and tokenizer is None:
            raise LlamalabError("stop strings need the tokenizer")
        seq = Sequence(prompt, max_new_tokens, sampler or Sampler(), generator, frozenset(stop_ids), slot,
                       TextStream(tokenizer, stop_ids=stop_ids, stop=stop) if tokenizer is not None else None,
                       top_logprobs=top_logprobs, matcher=grammar.start() if grammar is not None else None)
        self.slots[slot] = seq
        try:
            self._prefill(seq, cached, embeddings)
        except BaseException:
            self.slots[slot] = None  # a sequence that failed to start holds no slot
            raise
        return seq

    def _prefill(self, seq: Sequence, cached: int, embeddings: torch.Tensor | None = None) -> None:
        prompt, slot, generator, top_logprobs = seq.prompt, seq.slot, seq.generator, seq.top_logprobs
        tokens = torch.tensor([prompt[cached:]], device=self.device)
        if embeddings is not None:
            embeddings = embeddings[:, cached:].to(device=self.device, dtype=self.dtype)
        logits = self.model(tokens, cache=self.cache.rows(slot, slot + 1), pos=cached, last_only=True,
                            embeddings=embeddings)[:, -1]
        self.lengths[slot] = len(prompt)
        seen = None
        if seq.sampler.uses_history:
            if self.seen is None:
                self.seen = torch.zeros(self.max_batch, self.vocab_size, dtype=torch.bool, device=self.device)
            self.seen[slot] = False
            self.seen[slot, tokens.new_tensor(prompt)] = True
            seen = self.seen[slot:slot + 1]
        token = int(seq.sampler(self._constrain(logits, [seq], [0]), seen, generator)[0])
        if top_logprobs is not None:
            _record_logprobs(logits, [seq], [token], rows=[0])
        self._accept(seq, token)

    def release(self, seq: Sequence) -> None:
        """Free the sequence's slot (finished or not); its cache row is reused by the next `add`."""
        if self.slots[seq.slot] is seq:
            self.slots[seq.slot] = None
            if not seq.done:
                seq.finish_reason = "cancelled"

    def _check(self, prompt: list[int], max_new_tokens: int, cached: int) -> None:
        if max_new_tokens < 1:
            raise LlamalabError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompt:
            raise LlamalabError("every prompt needs at least one token (e.g. the BOS token)")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise LlamalabError(f"token id {bad[0]} is outside the model's vocabulary of {self.vocab_size}")
        if not 0 <= cached < len(prompt):
            raise ValueError(f"cached must be in [0, {len(prompt)}), got {cached}")
        if len(prompt) + max_new_tokens - 1 > self.max_len:  # the last token is never fed back
            raise LlamalabError(f"prompt of {len(prompt)} tokens + max_new_tokens {max_new_tokens} exceeds the "
                                f"context of {self.max_len} tokens; shorten the prompt or lower max_new_tokens")

    # ------------------------------------------------------------------------------------------- step
    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """Feed the last token of every active sequence and sample the next: the sequences that got one."""
        active = self.active()
        if not active:
            return []
        threads.adapt()  # the thread policy, in the thread that decodes
        B = max(s.slot for s in active) + 1  # rows 0..B-1 run; idle ones write to the scratch position
        feed, pos = [0] * B, [self.max_len] * B
        for s in active:
            feed[s.slot], pos[s.slot] = s.tokens[-1], self.lengths[s.slot]
        S = max(pos[s.slot] for s in active) + 1
        feed_t = torch.tensor(feed, device=self.device)[:, None]
        pos_t = torch.tensor(pos, device=self.device)
        mask = (self._positions[:S][None] <= pos_t[:, None])[:, None, None]
        rotary = pos_t.clamp(max=self.model.args.max_seq_len - 1)[:, None]
        logits = self._forward(feed_t, cache=self._rows(B), pos=pos_t, positions=rotary, mask=mask)[:, -1]
        for s in active:
            self.lengths[s.slot] += 1
            if self.seen is not None and s.sampler.uses_history:
                self.seen[s.slot, s.tokens[-1]] = True
        constrained = [s for s in active if s.matcher is not None]
        masked = self._constrain(logits, constrained, [s.slot for s in constrained], isolate=True)
        sampled = [(s, t) for s, t in zip(active, self._sample(masked, active)) if t is not None and not s.done]
        scored = [(s, t) for s, t in sampled if s.top_logprobs is not None]
        if scored:
            _record_logprobs(logits, *zip(*scored), rows=[s.slot for s, _ in scored])
        for s, t in sampled:
            try:
                self._accept(s, t)
            except Exception as e:  # e.g. its text could not be decoded: this sequence fails, the batch goes on
                self._fail(s, e)
        return active

    def _rows(self, B: int) -> KVCache:
        if B not in self._views:
            self._views[B] = self.cache.rows(0, B)
        return self._views[B]

    def _sample(self, logits: torch.Tensor, active: list[Sequence]) -> list[int | None]:
        """One token per active sequence; sequences sharing a sampler and a generator sample together. A group
        whose sampling fails fails alone (its sequences get None and finish with "error")."""
        if all(s.sampler.greedy and not s.sampler.uses_history for s in active):
            picked = logits.argmax(-1).tolist()  # the one host sync of a greedy step
            return [picked[s.slot] for s in active]
        groups: dict[tuple, list[Sequence]] = {}
        for s in active:
            groups.setdefault((s.sampler, id(s.generator)), []).append(s)
        out: dict[int, int] = {}
        for members in groups.values():
            try:
                rows = torch.tensor([s.slot for s in members], device=self.device)
                seen = self.seen[rows] if members[0].sampler.uses_history else None
                picked = members[0].sampler(logits[rows], seen, members[0].generator).tolist()
            except Exception as e:
                for s in members:
                    self._fail(s, e)
                continue
            out.update((s.slot, t) for s, t in zip(members, picked))
        return [out.get(s.slot) for s in active]

    def _constrain(self, logits: torch.Tensor, seqs: list[Sequence], rows: list[int],
                   isolate: bool = False) -> torch.Tensor:
        """`logits` with each constrained sequence's row masked to the tokens its grammar allows next (a
        copy; the model's own logits stay for log-probabilities). isolate: a sequence whose grammar fails
        fails alone."""
        seqs = [(s, r) for s, r in zip(seqs, rows) if s.matcher is not None]
        if not seqs:
            return logits
        bitmask = new_bitmask(len(seqs), logits.shape[-1])
        for i, (s, _) in enumerate(seqs):
            try:
                s.matcher.fill(bitmask, i)
            except Exception as e:
                if not isolate:
                    raise
                self._fail(s, e)
        keep = allowed(bitmask, logits.shape[-1]).to(logits.device)
        index = torch.tensor([r for _, r in seqs], device=logits.device)
        masked = logits.clone()
        masked[index] = logits[index].masked_fill(~keep, float("-inf"))
        return masked

    def _fail(self, seq: Sequence, e: Exception) -> None:
        if not self.isolate:
            raise e
        seq.finish_reason, seq.error = "error", f"{type(e).__name__}: {e}"

    def _accept(self, seq: Sequence, token: int) -> None:
        seq.tokens.append(token)
        if seq.text_stream is not None:
            seq.new_text = seq.text_stream.push(token)
        if seq.matcher is not None and token not in seq.stop_ids:
            seq.matcher.accept(token)
        if token in seq.stop_ids or (seq.text_stream is not None and seq.text_stream.stopped):
            seq.finish_reason = "stop"
        elif len(seq.tokens) >= seq.max_new_tokens or (seq.matcher is not None and seq.matcher.finished):
            seq.finish_reason = "stop" if seq.matcher is not None and seq.matcher.finished else "length"
            if seq.text_stream is not None:
                seq.new_text += seq.text_stream.finish()
        if seq.text_stream is not None:
            seq.text += seq.new_text


def _record_logprobs(logits: torch.Tensor, seqs, tokens, rows: list[int]) -> None:
    """Append each sequence's log-probability of its new token, and its top-k alternatives, from the
    model's own distribution (log-softmax of the raw logits)."""
    logp = logits[rows].float().log_softmax(-1)
    chosen = logp.gather(-1, logp.new_tensor(tokens, dtype=torch.long)[:, None])[:, 0].tolist()
    k = max(s.top_logprobs for s in seqs)
    top = logp.topk(k, dim=-1) if k else None
    for i, s in enumerate(seqs):
        alternatives = []
        if s.top_logprobs:
            ids, values = top.indices[i, :s.top_logprobs].tolist(), top.values[i, :s.top_logprobs].tolist()
            alternatives = list(zip(ids, values))
        s.logprobs.append((chosen[i], alternatives))


# ------------------------------------------------------------------------------------ one-shot helpers

def _check_context(model: Transformer, prompts: list[list[int]], max_new_tokens: int,
                   truncate: str | None) -> list[list[int]]:
    """The prompts, left-truncated to fit the context when asked (else a prompt too long is an error)."""
    if truncate not in (None, "left"):
        raise LlamalabError(f"unknown truncation policy {truncate!r}; use 'left' or none")
    if max_new_tokens < 1:  # before the engine sizes its cache from it
        raise LlamalabError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    limit = model.args.max_seq_len
    room = limit - max_new_tokens
    longest = max((len(p) for p in prompts), default=0)
    if longest <= room:
        return prompts
    if truncate == "left" and room > 0:
        return [p[-room:] for p in prompts]
    raise LlamalabError(
        f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's context "
        f"of {limit} tokens; shorten the prompt, lower max_new_tokens, or truncate='left' (drops the oldest tokens)")


def _generator(model: Transformer, seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator(model.norm.weight.device).manual_seed(seed)


def generate(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             repetition_penalty: float = 1.0, stop_ids: Iterable[int] = (), seed: int | None = None,
             truncate: str | None = None, compile: bool = False, grammar: Grammar | None = None) -> list[list[int]]:
    """New token ids for each prompt (ending with the stop id if one was sampled), all decoded together.

    temperature 0 = greedy. `seed` makes sampling reproducible. A prompt that does not fit in the
    context with max_new_tokens is an error unless truncate="left" (keep the most recent tokens).
    grammar: every sequence's tokens follow it (`grammar.compile_json`).
    """
    sampler = Sampler(temperature, top_k, top_p, min_p, repetition_penalty)
    prompts = _check_context(model, [list(p) for p in prompts], max_new_tokens, truncate)
    if not prompts:
        raise LlamalabError("no prompts given")
    engine = Engine(model, max_batch=len(prompts), max_len=max(map(len, prompts)) + max_new_tokens,
                    compile=compile)
    generator = _generator(model, seed)
    seqs = [engine.add(p, max_new_tokens=max_new_tokens, sampler=sampler, generator=generator, stop_ids=stop_ids,
                       grammar=grammar) for p in prompts]
    while engine.step():
        pass
    return [s.tokens for s in seqs]


def stream(model: Transformer, prompt: list[int], *, max_new_tokens: int, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
           repetition_penalty: float = 1.0, stop_ids: Iterable[int] = (), seed: int | None = None,
           truncate: str | None = None, compile: bool = False,
           embeddings: torch.Tensor | None = None, grammar: Grammar | None = None) -> Iterator[int]:
    """`generate` for one prompt, yielding each new token id as soon as it is sampled. embeddings: the
    prompt's input rows (see `Engine.add`); such a prompt is never truncated."""
    sampler = Sampler(temperature, top_k, top_p, min_p, repetition_penalty)
    (prompt,) = _check_context(model, [list(prompt)], max_new_tokens, None if embeddings is not None else truncate)
    engine = Engine(model, max_len=len(prompt) + max_new_tokens, compile=compile)
    seq = engine.add(prompt, max_new_tokens=max_new_tokens, sampler=sampler, generator=_generator(model, seed),
                     stop_ids=stop_ids, embeddings=embeddings, grammar=grammar)
    yield seq.tokens[-1]
    while engine.step():
        yield seq.tokens[-1]


class Session:
    """One growing token sequence (a conversation) and its KV cache: each `stream` call prefills only
    the part of the new prompt that differs from what the cache already holds."""

    def __init__(self, model: Transformer, max_len: int | None = None, compile: bool = False):
        self.engine = Engine(model, max_len=max_len, compile=compile)
        self.tokens: list[int] = []  # tokens whose keys/values are in the cache, in order

    @property
    def max_len(self) -> int:
        return self.engine.max_len

    def reset(self):
        self.tokens = []

    def stream(self, prompt: list[int], *, max_new_tokens: int, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
               repetition_penalty: float = 1.0, stop_ids: Iterable[int] = (),
               seed: int | None = None, embeddings: torch.Tensor | None = None) -> Iterator[int]:
        """embeddings: the prompt's input rows (see `Engine.add`); the caller keeps a cached prefix's rows the
        same (a conversation's images only grow)."""
        sampler = Sampler(temperature, top_k, top_p, min_p, repetition_penalty)
        prompt = list(prompt)
        if len(prompt) + max_new_tokens > self.max_len:
            raise LlamalabError(f"the conversation ({len(prompt)} tokens) + max_new_tokens {max_new_tokens} "
                                f"no longer fits the context of {self.max_len} tokens; start over (/reset)")
        reuse = 0
        for a, b in zip(self.tokens, prompt[:-1]):  # keep ≥ 1 new token to compute the next logits from
            if a != b:
                break
            reuse += 1
        self.tokens = prompt[:reuse]
        model = self.engine.model
        seq = self.engine.add(prompt, max_new_tokens=max_new_tokens, sampler=sampler, slot=0, cached=reuse,
                              generator=_generator(model, seed), stop_ids=stop_ids, embeddings=embeddings)
        try:
            yield seq.tokens[-1]
            while self.engine.step():
                yield seq.tokens[-1]
        finally:  # the last token yielded was never fed to the model
            self.tokens = prompt + seq.tokens[:-1]
            self.engine.release(seq)


def stream_text(tokens: Iterable[int], tokenizer, *, stop_ids: Iterable[int] = (),
                stop: Iterable[str] = ()) -> Iterator[str]:
    """Text of a token stream, yielded as soon as it is complete UTF-8 (see `TextStream`)."""
    text = TextStream(tokenizer, stop_ids=stop_ids, stop=stop)
    for t in tokens:
        piece = text.push(t)
        if piece:
            yield piece
        if text.stopped:
            return
    piece = text.finish()
    if piece:
        yield piece


def decode_text(tokens: list[int], tokenizer, *, stop_ids: Iterable[int] = (), stop: Iterable[str] = ()) -> str:
    """Non-streaming `stream_text`: decode up to the first stop id, cut at the first stop string."""
    stop_ids = set(stop_ids)
    end = next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
    return split_stop(tokenizer.decode(tokens[:end]), stop, final=True)[0]
