"""The evaluation engine: log-likelihoods of (context, continuation) pairs and generation until stop
strings, with our Transformer.

Tokenization follows lm-evaluation-harness's HF backend exactly, so per-item numbers match it: trailing
whitespace of the context moves to the continuation; whole = enc(context + continuation),
ctx = enc(context), continuation = whole[len(ctx):]; a BOS only when the tokenizer adds one by default
(`add_bos`); an empty context becomes the BOS (else EOS) token.

Speed: requests are deduplicated, and those sharing a context (the choices of one question) are packed
into one row: the context once, then every continuation, each attending to the context and to itself only,
at the positions it would have alone. Rows are batched longest first (right-padded: real positions never
see the padding), only the positions that predict continuation tokens go through the output head and the
log-softmax, and each batch's scores are gathered and summed with a few tensor ops.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..model import KVCache, Transformer

PACK_TOKENS = 512  # widest packed row (a question with its choices is far shorter; CPU is fastest at a few hundred)


class LLM:
    def __init__(self, model: Transformer, tokenizer, *, batch_size: int = 16, max_length: int | None = None,
                 progress: bool = True):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length = max_length or model.args.max_seq_len
        self.device = model.tok_embeddings.weight.device
        self.dtype = model.tok_embeddings.weight.dtype
        self.progress = progress
        self.add_bos = bool(getattr(tokenizer, "add_bos", False))
        bos = tokenizer.bos_id
        self.prefix_id = bos if bos is not None else tokenizer.eos_id

    # ------------------------------------------------------------------ tokenization (lm-eval's HF rules)
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, bos=self.add_bos)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            return [self.prefix_id], self.tokenizer.encode(continuation, bos=False)
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx):]

    # ------------------------------------------------------------------ log-likelihood
    def loglikelihood(self, requests: list[tuple[str, str]], desc: str = "loglikelihood") -> list[tuple[float, bool]]:
        """(sum of log P(continuation tokens | context), whether greedy decoding would produce them)."""
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in requests], desc)

    @torch.inference_mode()
    def loglikelihood_tokens(self, requests: list[tuple[list[int], list[int]]],
                             desc: str = "loglikelihood") -> list[tuple[float, bool]]:
        from tqdm.auto import tqdm

        keys = [(tuple(c), tuple(x)) for c, x in requests]
        by_context = defaultdict(list)
        for ctx, cont in dict.fromkeys(keys):  # dedupe, keep order
            by_context[ctx].append(cont)
        rows = [row for ctx, conts in by_context.items() for row in self._pack(ctx, conts)]
        rows.sort(key=lambda r: -self._width(r))
        results: dict = {}
        with tqdm(total=len(keys), desc=desc, disable=not self.progress, unit="req", dynamic_ncols=True) as bar:
            for i in range(0, len(rows), self.batch_size):
                out = self._rows(rows[i:i + self.batch_size])
                results.update(out)
                bar.update(len(out))
        return [results[k] for k in keys]

    @staticmethod
    def _width(row) -> int:
        window, conts = row[1], row[2]
        return len(window) + sum(len(c) - 1 for c in conts)

    def _pack(self, ctx: tuple, conts: list[tuple]) -> list[tuple[tuple, tuple, list[tuple]]]:
        """Rows (context, window, continuations): the window (the context, left-truncated so that every
        continuation fits in max_length positions) followed by each continuation but its last token.
        Continuations join one row while it stays within PACK_TOKENS (a context shared by thousands of
        requests, like the "Answer:" of the unconditional scores, would otherwise make rows of max_length
        tokens whose attention is quadratic); a single longer request still gets a row of its own."""
        limit = min(self.max_length, PACK_TOKENS)
        rows = []
        for cont in conts:
            window = ctx[max(0, len(ctx) + len(cont) - 1 - self.max_length):]
            if rows and rows[-1][1] == window and self._width(rows[-1]) + len(cont) - 1 <= limit:
                rows[-1][2].append(cont)
            else:
                rows.append((ctx, window, [cont]))
        return rows

    def _rows(self, rows) -> dict:
        """One forward for a batch of packed rows, right-padded. Each continuation attends to its row's
        window and to itself (the same positions it would have alone), never to its neighbours; the
        output head and log-softmax run only on the positions that predict continuation tokens."""
        B, T = len(rows), max(map(self._width, rows))
        tokens = torch.zeros(B, T, dtype=torch.long)
        positions = torch.zeros(B, T, dtype=torch.long)
        segment = torch.full((B, T), -1, dtype=torch.long)  # 0: window, k: k-th continuation, -1: padding
        index, targets, owner, keys = [], [], [], []         # per scored token: flat (row, slot), target, request
        for b, (ctx, window, conts) in enumerate(rows):
            n = len(window)
            tokens[b, :n], positions[b, :n], segment[b, :n] = torch.tensor(window), torch.arange(n), 0
            at = n
            for k, cont in enumerate(conts, 1):
                m = len(cont) - 1
                tokens[b, at:at + m] = torch.tensor(cont[:-1])
                positions[b, at:at + m] = torch.arange(n, n + m)
                segment[b, at:at + m] = k
                index += [b * T + n - 1] + list(range(b * T + at, b * T + at + m))
                targets += cont
                owner += [len(keys)] * len(cont)
                keys.append((ctx, cont))
                at += m
        seg_q, seg_k = segment[:, :, None], segment[:, None, :]
        mask = torch.ones(T, T, dtype=torch.bool).tril() & ((seg_k == 0) | (seg_k == seg_q))
        dev = self.device
        h = self.model.hidden_states(tokens.to(dev), positions=positions.to(dev), mask=mask[:, None].to(dev))
        logp = torch.log_softmax(self.model.output(h.flatten(0, 1)[torch.tensor(index, device=dev)]).float(), -1)
        targets, owner = torch.tensor(targets, device=dev), torch.tensor(owner, device=dev)
        ll = torch.zeros(len(keys), device=dev).index_add_(
            0, owner, logp.gather(-1, targets[:, None])[:, 0])
        miss = torch.zeros(len(keys), dtype=torch.long, device=dev).index_add_(
            0, owner, (logp.argmax(-1) != targets).long())
        return {k: (s, m == 0) for k, s, m in zip(keys, ll.tolist(), miss.tolist())}

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, prompts: list[str], *, until=(), max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float | None = None, seed: int | None = None, desc: str = "generate") -> list[str]:
        """Greedy (temperature 0) or sampled continuations of each prompt, cut at the first stop string
        (lm-eval's `generate_until`); decoding also stops at the tokenizer's end-of-text tokens."""
        from tqdm.auto import tqdm

        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(seed)
        budget = self.max_length - max_new_tokens
        encoded = [self.encode(p)[-budget:] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        texts: list[str] = [""] * len(prompts)
        bar = tqdm(total=len(prompts), desc=desc, disable=not self.progress, unit="req", dynamic_ncols=True)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            outs = self._generate_batch([encoded[i] for i in idx], until, max_new_tokens, temperature, top_p, gen)
            for i, t in zip(idx, outs):
                texts[i] = t
            bar.update(len(idx))
        bar.close()
        return texts

    def _generate_batch(self, prompts, until, max_new_tokens, temperature, top_p, gen) -> list[str]:
        from .scoring import truncate_at_stop

        B, L = len(prompts), max(map(len, prompts))
        dev = self.device
        lengths = torch.tensor([len(p) for p in prompts], device=dev)
        pad = L - lengths                                              # left padding per row
        tokens = torch.zeros(B, L, dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):
            tokens[i, L - len(p):] = torch.tensor(p, device=dev)
        slots = torch.arange(L + max_new_tokens, device=dev)
        valid = slots[None, :] >= pad[:, None]                         # (B, S): key slot holds a real token
        causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
        # padded queries attend to themselves only, so no row of the softmax is empty
        mask = (causal[None] & valid[:, None, :L]) | torch.eye(L, dtype=torch.bool, device=dev)[None]
        positions = (torch.arange(L, device=dev)[None] - pad[:, None]).clamp(min=0)
        cache = KVCache.allocate(self.model.args, B, L + max_new_tokens, dev, self.dtype)
        logits = self.model(tokens, cache=cache, positions=positions, mask=mask[:, None], last_only=True)[:, -1]
        stop_ids = set(getattr(self.tokenizer, "stop_ids", ()) or ()) | {self.tokenizer.eos_id}
        new = [[] for _ in range(B)]
        done = [False] * B
        for t in range(max_new_tokens):
            nxt = self._pick(logits.float(), temperature, top_p, gen)
            for i in range(B):
                if done[i]:
                    continue
                tok = int(nxt[i])
                if tok in stop_ids:
                    done[i] = True
                    continue
                new[i].append(tok)
                if until and any(u in self.tokenizer.decode(new[i]) for u in until):
                    done[i] = True
            if all(done) or t == max_new_tokens - 1:
                break
            pos = L + t
            logits = self.model(nxt[:, None], cache=cache, pos=pos, positions=(lengths + t)[:, None],
                                mask=valid[:, None, None, :pos + 1], last_only=True)[:, -1]
        return [truncate_at_stop(self.tokenizer.decode(n), until) for n in new]

    @staticmethod
    def _pick(logits, temperature, top_p, gen):
        if temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p is not None and top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > top_p
            sorted_p[drop] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=gen)[:, 0]
