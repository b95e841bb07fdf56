"""The one FLOP count: what the planner budgets and what the trainer's MFU divides by the hardware peak.

Per token of training, with N = matmul parameters, L layers, H query heads of width Q, sequence length T
(Chowdhery et al. 2022, PaLM, appendix B; torchtitan counts the same way):

    6·N + 12·L·H·Q·T

6·N: every weight matrix takes part in one multiply-add (2 FLOPs) per token forward and two backward
(the gradients of the input and of the weight). N counts every weight matrix except the input embedding
table, which is a row lookup, not a matmul (a tied output projection *is* counted: the logits are a full
matmul against that matrix), and leaves out the RMSNorm gains, which multiply elementwise. 12·L·H·Q·T: the attention scores QKᵀ and their use on the values,
2·T·H·Q FLOPs each per token forward, ×3 with the backward. Like PaLM this counts the full T×T score
matrix; a causal kernel skips about half of it, so this is the convention MFU figures are quoted in, not
the kernel's work. Norms, rotary, SwiGLU's product and the softmax are elementwise and left out (< 1%).

Per generated token at context c (inference, KV cache): 2·N + 4·L·H·Q·c.
"""

from __future__ import annotations

import functools

from ..config import ModelArgs


@functools.lru_cache(maxsize=64)
def _meta_counts(args: ModelArgs) -> tuple[int, int]:
    """(all parameters, parameters of the matmuls) of the model itself, built on the meta device."""
    import torch

    from ..model import Transformer

    with torch.device("meta"):
        model = Transformer(args)
    matrices = sum(p.numel() for p in model.parameters() if p.ndim == 2)
    lookup = 0 if args.tie_embeddings else model.tok_embeddings.weight.numel()
    return model.num_params(), matrices - lookup


def count_params(args: ModelArgs) -> int:
    """Exact parameter count, from the model itself built on the meta device (no memory); a tied
    embedding is one matrix."""
    return _meta_counts(args)[0]


def matmul_params(args: ModelArgs) -> int:
    """N of the FLOP count: the weight matrices but the input embedding table (which a tied output
    projection multiplies with, so then it counts)."""
    return _meta_counts(args)[1]


def attention_flops_per_token(args: ModelArgs, seq_len: int) -> int:
    """Forward FLOPs of QKᵀ and of the weighted sum of V for one token attending over `seq_len` keys."""
    return 4 * args.n_layers * args.n_heads * args.head_dim * seq_len


def training_flops_per_token(args: ModelArgs, seq_len: int) -> int:
    """6·N + 12·L·H·Q·T: forward and backward FLOPs per trained token (see the module docstring)."""
    return 6 * matmul_params(args) + 3 * attention_flops_per_token(args, seq_len)


def inference_flops_per_token(args: ModelArgs, context: int) -> int:
    """2·N + 4·L·H·Q·c: forward FLOPs to generate one token after `context` tokens (with a KV cache)."""
    return 2 * matmul_params(args) + attention_flops_per_token(args, context)


def training_flops(args: ModelArgs, tokens: float, seq_len: int) -> float:
    """FLOPs of a training run over `tokens` tokens in sequences of `seq_len`."""
    return float(tokens) * training_flops_per_token(args, seq_len)
