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
import math

from ..config import ModelArgs


@functools.lru_cache(maxsize=64)
def parameter_shapes(args: ModelArgs) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of every parameter (a tied matrix once), from the model itself built on the meta device
    (no memory): every count here is the model definition's, never a formula that could drift from it."""
    import torch

    from ..model import Transformer

    with torch.device("meta"):
        model = Transformer(args)
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def count_params(args: ModelArgs) -> int:
    """Exact parameter count (Table 2's), a tied embedding counted once."""
    return sum(math.prod(shape) for _, shape in parameter_shapes(args))


def matmul_params(args: ModelArgs) -> int:
    """N of the FLOP count: the weight matrices but the input embedding table (which a tied output
    projection multiplies with, so then it counts)."""
    lookup = "" if args.tie_embeddings else "tok_embeddings.weight"
    return sum(math.prod(shape) for name, shape in parameter_shapes(args) if len(shape) == 2 and name != lookup)


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
