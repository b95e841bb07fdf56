"""The evaluation engine: log-likelihoods of (context, continuation) pairs and generation until stop
strings, with our Transformer.

Tokenization follows lm-evaluation-harness's HF backend exactly, so per-item numbers match it: trailing
whitespace of the context moves to the continuation; whole = enc(context + continuation),
ctx = enc(context), continuation = whole[len(ctx):]; a BOS only when the tokenizer adds one by default
(`add_bos`); an empty context becomes the BOS (else EOS) token.

Speed: requests are deduplicated; those sharing a long context (the choices of one BoolQ/HellaSwag/MMLU
question) run the context once into a KV cache and then all continuations as one batch off that cached
prefix; the rest are batched longest first (right-padded: a causal model's real positions never see the
padding); and only the continuation positions go through the output head and the log-softmax.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..model import KVCache, Transformer


class LLM:
    def __init__(self, model: Transformer, tokenizer, *, batch_size: int = 16, max_length: int | None = None,
                 progress: bool = True, min_shared_context: int = 1):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length = max_length or model.args.max_seq_len
        self.device = model.tok_embeddings.weight.device
        self.dtype = model.tok_embeddings.weight.dtype
        self.progress = progress
        self.min_shared_context = min_shared_context  # shorter shared contexts: cheaper to just batch
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
        for key in dict.fromkeys(keys):       # dedupe, keep order
            by_context[key[0]].append(key[1])
        shared, single = [], []
        for ctx, conts in by_context.items():
            fits = len(ctx) + max(map(len, conts)) - 1 <= self.max_length
            if len(conts) > 1 and fits and len(ctx) >= max(self.min_shared_context, 1):
                shared.append((ctx, conts))
            else:
                single.extend((ctx, x) for x in conts)
        results: dict = {}
        bar = tqdm(total=len(shared) + len(single), desc=desc, disable=not self.progress, unit="req",
                   dynamic_ncols=True)
        shared.sort(key=lambda g: -(len(g[0]) + max(map(len, g[1]))))
        i = 0
        while i < len(shared):  # groups of questions whose choices together fill about one batch
            j, rows = i, 0
            while j < len(shared) and (j == i or rows + len(shared[j][1]) <= self.batch_size):
                rows += len(shared[j][1])
                j += 1
            results.update(self._shared_contexts(shared[i:j]))
            bar.update(j - i)
            i = j
        single.sort(key=lambda r: -(len(r[0]) + len(r[1])))
        for i in range(0, len(single), self.batch_size):
            chunk = single[i:i + self.batch_size]
            results.update(self._batch(chunk))
            bar.update(len(chunk))
        bar.close()
        return [results[k] for k in keys]

    def _score(self, logits: torch.Tensor, targets: list[int]) -> tuple[float, bool]:
        """logits (n, V) predicting `targets` (n,): summed log-probability, greedy or not."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        t = torch.tensor(targets, device=logp.device)
        return logp.gather(-1, t[:, None]).sum().item(), bool((logp.argmax(-1) == t).all())

    def _hidden(self, tokens, cache=None, positions=None, mask=None, pos: int = 0) -> torch.Tensor:
        """Final normalized hidden states (B, T, dim): the output head is applied only where needed."""
        return self.model.hidden_states(tokens, cache=cache, pos=pos, positions=positions, mask=mask)

    def _batch(self, chunk) -> dict:
        """Independent requests, right-padded into one forward (left-truncated to the window); the output
        head runs only on the continuation positions."""
        rows = [(list(ctx) + list(cont))[-(self.max_length + 1):][:-1] for ctx, cont in chunk]
        width = max(map(len, rows))
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = torch.tensor(r)
        h = self._hidden(tokens.to(self.device))
        spans = [(i, len(r) - len(cont), len(r)) for i, ((_, cont), r) in enumerate(zip(chunk, rows))]
        logits = self.model.output(torch.cat([h[i, a:b] for i, a, b in spans]))
        out, at = {}, 0
        for (ctx, cont), (i, a, b) in zip(chunk, spans):
            out[(ctx, cont)] = self._score(logits[at:at + b - a], list(cont))
            at += b - a
        return out

    def _shared_contexts(self, groups: list[tuple[tuple, list[tuple]]]) -> dict:
        """Each context once (right-padded batch into a KV cache), then every continuation of every group
        as one batch attending to its own group's cached prefix."""
        dev, args = self.device, self.model.args
        G, lens = len(groups), [len(ctx) for ctx, _ in groups]
        P = max(lens)
        tokens = torch.zeros(G, P, dtype=torch.long)
        for g, (ctx, _) in enumerate(groups):
            tokens[g, :len(ctx)] = torch.tensor(ctx)
        prefix = KVCache.allocate(args, G, P, dev, self.dtype)
        h = self._hidden(tokens.to(dev), cache=prefix)
        last = self.model.output(h[torch.arange(G), torch.tensor(lens) - 1])      # (G, V): first continuation token
        rows = [(g, c) for g, (_, conts) in enumerate(groups) for c in conts]
        W = max(len(c) for _, c in rows) - 1
        out = {}
        logits = None
        if W > 0:
            R = len(rows)
            owner = torch.tensor([g for g, _ in rows], device=dev)
            cache = KVCache.allocate(args, R, P + W, dev, self.dtype)
            for dst, src in zip(cache.k + cache.v, prefix.k + prefix.v):
                dst[:, :, :P] = src.index_select(0, owner)
            x = torch.zeros(R, W, dtype=torch.long)
            for r, (_, c) in enumerate(rows):
                x[r, :len(c) - 1] = torch.tensor(c[:-1])
            n_ctx = torch.tensor(lens, device=dev).index_select(0, owner)              # (R,)
            positions = n_ctx[:, None] + torch.arange(W, device=dev)[None]
            prefix_ok = torch.arange(P, device=dev)[None, None, :] < n_ctx[:, None, None]   # (R, 1, P)
            causal = torch.ones(W, W, dtype=torch.bool, device=dev).tril()[None]
            mask = torch.cat([prefix_ok.expand(R, W, P), causal.expand(R, W, W)], dim=-1)[:, None]
            hc = self._hidden(x.to(dev), cache=cache, positions=positions, mask=mask, pos=P)
            need = [(r, len(c) - 1) for r, (_, c) in enumerate(rows)]
            flat = self.model.output(torch.cat([hc[r, :n] for r, n in need]))
            logits, at = [], 0
            for _, n in need:
                logits.append(flat[at:at + n])
                at += n
        for r, (g, c) in enumerate(rows):
            steps = last[g][None] if len(c) == 1 else torch.cat([last[g][None], logits[r]])
            out[(groups[g][0], c)] = self._score(steps, list(c))
        return out

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
