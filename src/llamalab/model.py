"""The LLaMA transformer (Touvron et al. 2023, §2.2), and nothing else.

Decoder-only transformer with three changes from the original: pre-normalization with RMSNorm,
the SwiGLU feed-forward, and rotary position embeddings. Later LLaMA-family checkpoints add
grouped-query attention (`n_kv_heads`), tied embeddings and other rope θ; all are config.

Parameter names and the q/k layout are Meta's (`tok_embeddings`, `layers.N.attention.wq`, ...; rotary
rotates *adjacent* pairs), so a Meta checkpoint loads as is; `formats/` maps the other layouts.

The KV cache is an explicit object passed to `forward` — the modules hold no decoding state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelArgs


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · g, computed in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_frequencies(args: ModelArgs) -> torch.Tensor:
    """θ_i = base^(-2i/d) for i < d/2, scaled when the config asks: `linear` position interpolation (Chen et al.
    2023: position m is read as m / factor, i.e. every θ_i / factor) or Llama-3.1's `llama3` kind."""
    d = args.head_dim
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    scaling = args.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_len = scaling.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / freqs
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, freqs / factor, freqs)
        medium = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        freqs = torch.where(medium, (1 - smooth) * freqs / factor + smooth * freqs, scaled)
    elif kind == "linear":
        freqs = freqs / scaling["factor"]
    elif kind not in (None, "default"):
        raise ValueError(f"unsupported rope scaling {scaling!r}")
    return freqs.float()


def rope_cache(args: ModelArgs, device=None, length: int | None = None) -> torch.Tensor:
    """e^(i·m·θ_j) for every position m < length (default max_seq_len): a complex (length, head_dim/2) tensor.
    Each entry is computed on its own (m·θ_j, then cos and sin), so the table for n positions is the first n
    rows of any longer one, bit for bit."""
    freqs = rope_frequencies(args).to(device)
    n = args.max_seq_len if length is None else length
    angles = torch.outer(torch.arange(n, device=device, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent pair (x_2j, x_2j+1) of every head, read as the complex number x_2j + i·x_2j+1,
    by the angle m·θ_j (Su et al. 2021; Meta's reference formulation): the complex multiply written out in
    reals, so that a compiled step fuses it (inductor has no complex kernels) and eager needs no complex copy.

    x: (B, T, H, head_dim); rotation: (B or 1, T, 1, head_dim/2, 2), the rotary table viewed as real (cos, sin).
    """
    re, im = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = rotation.unbind(-1)
    return torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1).flatten(-2).type_as(x)


@dataclass
class KVCache:
    """Keys and values of every layer for `max_len` positions: k[i], v[i] are (B, n_kv_heads, max_len, head_dim)
    (`kv_heads`: fewer, for a process that computes only some of the heads)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def allocate(cls, args: ModelArgs, batch_size: int, max_len: int | None = None,
                 device=None, dtype=torch.float32, kv_heads: int | None = None) -> "KVCache":
        shape = (batch_size, kv_heads or args.kv_heads, max_len or args.max_seq_len, args.head_dim)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)])

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def rows(self, start: int, stop: int) -> "KVCache":
        """Rows [start, stop) as a cache of their own (views: writes land in this cache)."""
        return KVCache([k[start:stop] for k in self.k], [v[start:stop] for v in self.v])


class Attention(nn.Module):
    """Causal multi-head attention with grouped-query heads, via `scaled_dot_product_attention`
    (memory-efficient / flash kernels: the masked scores are never materialized)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x, rotation, kv=None, pos: int = 0, mask=None):
        B, T, _ = x.shape
        # heads counted from the projections' widths: a tensor-parallel rank computes only its share of them
        q = apply_rotary(self.wq(x).view(B, T, -1, self.head_dim), rotation)
        k = apply_rotary(self.wk(x).view(B, T, -1, self.head_dim), rotation)
        v = self.wv(x).view(B, T, -1, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv is not None and isinstance(pos, torch.Tensor):
            # batched decoding: one new token per row, each written at its own slot pos[b]; the mask
            # (B, 1, 1, S) says which of the first S slots each row attends to
            k_cache, v_cache = kv
            rows = torch.arange(B, device=x.device)
            k_cache[rows, :, pos] = k[:, :, 0]
            v_cache[rows, :, pos] = v[:, :, 0]
            S = mask.shape[-1]
            return self.wo(self._decode_attention(q, k_cache[:, :, :S], v_cache[:, :, :S], mask).reshape(B, 1, -1))
        elif kv is not None:  # write this chunk into the cache, attend over everything so far
            k_cache, v_cache = kv
            k_cache[:, :, pos:pos + T] = k
            v_cache[:, :, pos:pos + T] = v
            k, v = k_cache[:, :, :pos + T], v_cache[:, :, :pos + T]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))

    def _decode_attention(self, q, k, v, mask):
        """Attention of one query per row as two small matmuls: q (B, H, 1, hd) grouped by KV head against
        k, v (B, KV, S, hd); mask (B, 1, 1, S). (SDPA's CPU kernels are tuned for long queries; with a mask and
        a single query they are many times slower than this.)"""
        B, KV, S = k.shape[:3]  # KV: this process's key/value heads (fewer under tensor parallelism)
        q = q.view(B, KV, -1, self.head_dim)  # the query heads sharing each KV head
        scores = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
        probs = scores.float().masked_fill(~mask.view(B, 1, 1, S), float("-inf")).softmax(-1).type_as(q)
        return probs @ v  # (B, KV, n_rep, hd) = (B, H, hd) in head order


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) ⊙ w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-normalization: x + attn(norm(x)), then h + ffn(norm(h))."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)

    def forward(self, x, rotation, kv=None, pos: int = 0, mask=None):
        h = x + self.attention(self.attention_norm(x), rotation, kv, pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.tie_weights()
        # A plain attribute, not a buffer (as in Meta's reference): `model.to(torch.bfloat16)` would cast a
        # complex buffer to real and silently drop the sines. It moves with the parameters (`_apply`).
        # It covers the positions used so far and grows on demand (`ensure_positions`): max_seq_len is a
        # header value, and 2^33 positions of a tiny model's table would be terabytes.
        self.freqs_cis = rope_cache(args, length=0)

    def _apply(self, fn, recurse=True):
        # Every move (`.to`, `.cuda`, `.to_empty`) comes through here, as for torch's own RNN modules: the
        # rotary table follows the parameters to their device once per move, not once per forward.
        super()._apply(fn, recurse)
        self.init_buffers()
        return self

    def tie_weights(self):
        """Share the output projection with the token embedding when the config says so
        (call again after `load_state_dict(assign=True)`, which replaces parameters)."""
        if self.args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def init_buffers(self, device=None):
        """Recompute the rotary table on `device` (default: the parameters'), e.g. after
        `load_state_dict(assign=True)` put parameters on a device without moving the module."""
        self.freqs_cis = rope_cache(self.args, device or self.tok_embeddings.weight.device, len(self.freqs_cis))

    def ensure_positions(self, n: int) -> None:
        """Extend the rotary table to positions 0..n-1 (never past max_seq_len), recomputed as `rope_cache`
        computes it. A forward with an integer `pos` extends it itself; a caller passing `positions` as a
        tensor calls this first (reading the tensor's largest position would wait for the device every
        step), and before any `torch.compile`d forward, which must not see the table change."""
        n = min(n, self.args.max_seq_len)
        if n > len(self.freqs_cis):
            self.freqs_cis = rope_cache(self.args, self.freqs_cis.device, n)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None):
        """Fresh weights for pretraining (see `initial_weights`)."""
        self.init_buffers()
        for p, value in initial_weights(self, std, generator):
            p.copy_(value)

    def num_params(self) -> int:
        """Parameters counted once each (a tied embedding is one matrix)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor, *, cache: KVCache | None = None, pos: int | torch.Tensor = 0,
                positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                last_only: bool = False, select: torch.Tensor | None = None,
                embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens (B, T); `last_only`: for the last position only (generation);
        `select`: a boolean (B, T) mask, logits (N, vocab) for its N True positions only;
        `embeddings`: (B, T, dim) used in place of the tokens' embeddings (LLaVA's image features spliced in)."""
        h = self.hidden_states(tokens, cache=cache, pos=pos, positions=positions, mask=mask, embeddings=embeddings)
        if select is not None:
            return self.output(h[select])
        return self.output(h[:, -1:] if last_only else h)

    def hidden_states(self, tokens: torch.Tensor, *, cache: KVCache | None = None, pos: int | torch.Tensor = 0,
                      positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                      embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Final normalized hidden states (B, T, dim): everything but the output projection.

        cache: keys/values are written at slots [pos, pos+T) and attention covers slots [0, pos+T).
          pos may also be a (B,) tensor when T == 1: row b writes slot pos[b] (and is at rotary
          position pos[b] unless `positions` says otherwise); then `mask` (B, 1, 1, S) is required.
        positions: rotary positions (B, T); default pos..pos+T-1 for every row (left-padded batches
          pass their own; the rotary table must already cover them: `ensure_positions`).
        mask: boolean (B, 1, T, S), True = may attend; default causal.
        """
        B, T = tokens.shape
        if positions is None and isinstance(pos, torch.Tensor):
            positions = pos[:, None]
        if positions is None:
            if pos + T > self.args.max_seq_len:
                raise ValueError(f"sequence of {pos + T} positions exceeds max_seq_len {self.args.max_seq_len}")
            if pos + T > len(self.freqs_cis):  # at least double: decoding one token at a time extends it rarely
                self.ensure_positions(max(pos + T, 2 * len(self.freqs_cis)))
        table = torch.view_as_real(self.freqs_cis)  # (positions, head_dim/2, 2): cos, sin
        rotation = table[pos:pos + T][None, :, None] if positions is None else table[positions][:, :, None]
        if mask is None and cache is not None and not isinstance(pos, torch.Tensor) and pos > 0 and T > 1:
            # a chunk after a cached prefix: query i (slot pos+i) sees slots 0..pos+i
            mask = torch.ones(T, pos + T, dtype=torch.bool, device=tokens.device).tril(diagonal=pos)
        h = self.tok_embeddings(tokens) if embeddings is None else embeddings
        for i, layer in enumerate(self.layers):
            kv = (cache.k[i], cache.v[i]) if cache is not None else None
            h = layer(h, rotation, kv, pos, mask)
        return self.norm(h)


def initial_weights(model: Transformer, std: float = 0.02, generator: torch.Generator | None = None):
    """Each parameter with its initial value for pretraining (`initial_value`), drawn in order on the CPU from
    `generator`, so the draws are the same on any device and however the parameters are later sharded."""
    for name, p in model.named_parameters():
        yield p, initial_value(name, p.shape, p.dtype, model.args.n_layers, std, generator)


def initial_value(name: str, shape, dtype, n_layers: int, std: float = 0.02,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The init rule for the parameter `name`: norms 1, weight matrices N(0, std), the residual projections
    (wo, w2) scaled by 1/sqrt(2·n_layers) (GPT-2)."""
    value = torch.empty(shape, dtype=dtype)
    if len(shape) == 1:
        return value.fill_(1.0)
    scale = 1 / math.sqrt(2 * n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1.0
    return nn.init.normal_(value, mean=0.0, std=std * scale, generator=generator)
