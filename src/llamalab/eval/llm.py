"""The evaluation engine: log-likelihoods of (context, continuation) pairs and generation until stop
strings, with our Transformer.

Tokenization follows lm-evaluation-harness's HF backend exactly, so per-item numbers match it: trailing
whitespace of the context moves to the continuation; whole = enc(context + continuation),
ctx = enc(context), continuation = whole[len(ctx):]; a BOS only when the tokenizer adds one by default
(`add_bos`); an empty context becomes the BOS (else EOS) token.

Speed: requests are deduplicated, and requests sharing a token prefix (the choices of one question share
their context, WinoGrande's two sentences the words before the blank, few-shot prompts their shots) are
packed into one row as a prefix tree: the shared prefix once, then each branch, every token attending to
its own sequence only, at the positions it would have alone. Rows are batched longest first (right-padded:
real positions never see the padding), only the positions that predict continuation tokens go through the
output head and the log-softmax, and each batch's scores are gathered and summed with a few tensor ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import threads
from ..generate import Engine
from ..model import Transformer
from ..runtime.batch import Job, run_batch
from ..runtime.likelihood import token_logprobs
from ..sampling import Sampler

PACK_TOKENS = 512  # widest packed row (a question with its choices is far shorter; CPU is fastest at a few hundred)


@dataclass
class PackedRow:
    """One packed row: a prefix tree of request sequences laid out branch after branch."""
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # rotary position = depth in the tree
    branches: list[tuple[list[int], int, int]] = field(default_factory=list)  # (shared slots, new lo, hi)
    scored: list[tuple[tuple, list[int]]] = field(default_factory=list)        # (request, slots predicting it)

    @property
    def first(self) -> int:
        """Length of the row's first sequence (its first branch shares nothing)."""
        return self.branches[0][2]


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
        self.block_flops = 2 * sum(p.numel() for p in model.layers.parameters())  # matmul FLOPs of one token

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
        rows = self.pack(list(dict.fromkeys(keys)))  # deduplicated, first-seen order
        rows.sort(key=lambda r: -len(r.tokens))
        results: dict = {}
        with tqdm(total=len(keys), desc=desc, disable=not self.progress, unit="req", dynamic_ncols=True) as bar:
            for i in range(0, len(rows), self.batch_size):
                out = self._rows(rows[i:i + self.batch_size])
                results.update(out)
                bar.update(len(out))
        return [results[k] for k in keys]

    def sequence(self, ctx: tuple, cont: tuple) -> tuple:
        """The tokens the model reads for one request (lm-eval's window): the last max_length tokens of
        context + continuation but its last token; the last len(cont) positions predict the continuation."""
        return (ctx + cont)[:-1][-self.max_length:]

    def pack(self, requests: list[tuple[tuple, tuple]]) -> list[PackedRow]:
        """Requests as prefix trees: in lexicographic order each sequence shares its longest common prefix
        with the one before it, so a row holds that prefix once (the choices of a question share their
        context; WinoGrande's two sentences share the words before the blank; few-shot prompts share the
        shots) and the rest of each sequence branches off it. A sequence joins the current row when the
        body compute it saves outweighs the attention it adds to the row, and while the row stays within
        PACK_TOKENS (a single longer sequence gets a row of its own)."""
        args = self.model.args
        per_pair = 4 * args.n_heads * args.head_dim * args.n_layers  # attention FLOPs of one (query, key)
        rows: list[PackedRow] = []
        row, prev, path = None, (), []
        for key, seq in sorted(((k, self.sequence(*k)) for k in requests), key=lambda ks: ks[1]):
            shared = 0
            if row is not None:
                while shared < min(len(seq), len(prev)) and seq[shared] == prev[shared]:
                    shared += 1
            new = len(seq) - shared
            if (row is None or shared == 0 or len(row.tokens) + new > max(PACK_TOKENS, row.first)
                    or shared * self.block_flops < 2 * len(row.tokens) * new * per_pair):
                row, shared, new, path = PackedRow(), 0, len(seq), []
                rows.append(row)
            path = path[:shared]
            row.branches.append((list(path), len(row.tokens), len(row.tokens) + new))
            for t in seq[shared:]:
                path.append(len(row.tokens))
                row.tokens.append(t)
                row.positions.append(len(path) - 1)
            row.scored.append((key, path[len(seq) - len(key[1]):]))
            prev = seq
        return rows

    def _rows(self, rows: list[PackedRow]) -> dict:
        """One forward for a batch of packed rows, right-padded. Each token attends to the tokens of its own
        sequence before it (its ancestors in the row's tree), at the positions it would have alone; the output
        head and log-softmax run only on the positions that predict continuation tokens."""
        threads.adapt()
        B, T = len(rows), max(len(r.tokens) for r in rows)
        tokens = torch.zeros(B, T, dtype=torch.long)
        positions = torch.zeros(B, T, dtype=torch.long)
        mask = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)  # padding attends to itself only
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        index, targets, owner, keys = [], [], [], []  # per scored token: flat (row, slot), target, request
        for b, row in enumerate(rows):
            n = len(row.tokens)
            tokens[b, :n], positions[b, :n] = torch.tensor(row.tokens), torch.tensor(row.positions)
            for shared, lo, hi in row.branches:  # new nodes see the shared prefix and their own branch
                mask[b, lo:hi, shared] = True
                mask[b, lo:hi, lo:hi] = causal[:hi - lo, :hi - lo]
            for key, nodes in row.scored:
                index += [b * T + i for i in nodes]
                targets += key[1]
                owner += [len(keys)] * len(nodes)
                keys.append(key)
        dev = self.device
        self.model.ensure_positions(T)  # every position is < T
        h = self.model.hidden_states(tokens.to(dev), positions=positions.to(dev), mask=mask[:, None].to(dev))
        h = h.flatten(0, 1)[torch.tensor(index, device=dev)]
        targets, owner = torch.tensor(targets, device=dev), torch.tensor(owner, device=dev)
        token_ll, greedy = token_logprobs(self.model, h, targets, greedy=True)
        ll = torch.zeros(len(keys), device=dev).index_add_(0, owner, token_ll)
        miss = torch.zeros(len(keys), dtype=torch.long, device=dev).index_add_(
            0, owner, (greedy != targets).long())
        return {k: (s, m == 0) for k, s, m in zip(keys, ll.tolist(), miss.tolist())}

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[str], *, until=(), max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float | None = None, seed: int | None = None, desc: str = "generate") -> list[str]:
        """Greedy (temperature 0) or sampled continuations of each prompt, cut at the first stop string
        (lm-eval's `generate_until`); decoding also stops at the tokenizer's end-of-text tokens.

        Runs on the decoding engine with continuous batching: `batch_size` slots, a finished request's
        slot is refilled with the next prompt (longest first) while the others keep decoding."""
        from tqdm.auto import tqdm

        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(seed)
        budget = self.max_length - max_new_tokens
        encoded = [self.encode(p)[-budget:] for p in prompts]
        longest = max((len(e) for e in encoded), default=0)
        engine = Engine(self.model, max_batch=max(1, min(self.batch_size, len(prompts))),
                        max_len=longest + max_new_tokens)
        sampler = Sampler(temperature=temperature, top_p=top_p)
        stop_ids = set(getattr(self.tokenizer, "stop_ids", ()) or ()) | {self.tokenizer.eos_id}
        jobs = [Job(e, max_new_tokens, sampler, gen, stop_ids, tuple(until)) for e in encoded]
        with tqdm(total=len(prompts), desc=desc, disable=not self.progress, unit="req", dynamic_ncols=True) as bar:
            seqs = run_batch(engine, jobs, tokenizer=self.tokenizer, on_finish=lambda _: bar.update(1),
                             order=sorted(range(len(prompts)), key=lambda i: -len(encoded[i])))  # longest first
        return [seq.text for seq in seqs]
