"""Bytes per GPU of a training run as `llamalab train` runs it: weights, gradients, AdamW state, activations.

Model states are exact, from the parameter shapes of the model built on the meta device: fp32 weights and
gradients (4 bytes each), AdamW's two fp32 moments (8 bytes) and, with the fused kernel, one fp32 step
counter per tensor; FSDP2 shards each tensor along dim 0, padded to a multiple of the shard count.

Activations are what autograd keeps from the forward pass for the backward pass, counted per token from
the operations of `llamalab.model` (see `block_activation_bytes`), plus the transient buffers at the
peak of the backward pass. Three precisions, as the trainer runs them:

    fp32          everything fp32 (the CPU default)
    bf16 (ddp)    autocast: fp32 residual stream, bf16 matmuls; each matmul's input is cast (and kept)
                  once per matmul, and the bf16 copies of the weights are kept until their backward
    bf16 (fsdp)   FSDP2 MixedPrecisionPolicy: bf16 parameters and activations throughout, fp32 master
                  weights, gradients reduced in fp32

Activation checkpointing (per block, as `train.parallel.apply_activation_checkpointing` does) keeps only
each block's input and recomputes one block at a time during the backward pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..config import ModelArgs
from ..errors import LlamalabError
from .flops import matmul_params, parameter_shapes

FP32 = 4


def sharded_numel(shape: tuple[int, ...], shards: int) -> int:
    """Elements one rank holds of a tensor FSDP2 shards along dim 0 (padded to a multiple of `shards`)."""
    rest = math.prod(shape[1:])
    return -(-shape[0] // shards) * rest


@dataclass(frozen=True)
class Precision:
    """Bytes per element of the tensors the backward pass keeps, for one way of training."""

    name: str
    residual: int  # the residual stream between blocks (and the normalized activations)
    compute: int  # matmul inputs and outputs, attention, SwiGLU
    casts_per_matmul: bool  # autocast casts a shared input once per matmul that reads it
    weight_copies: bool  # autocast keeps a bf16 copy of every weight until its backward


def precision(dtype: str, parallel: str) -> Precision:
    if dtype == "fp32":
        return Precision("fp32", FP32, FP32, False, False)
    if dtype != "bf16":
        raise LlamalabError(f"dtype must be fp32 or bf16, got {dtype!r}")
    if parallel == "fsdp":
        return Precision("bf16 (FSDP2 mixed precision)", 2, 2, False, False)
    return Precision("bf16 (autocast)", FP32, 2, True, True)


def block_activation_bytes(args: ModelArgs, p: Precision) -> int:
    """Bytes one transformer block keeps per token for its backward pass (`model.TransformerBlock`).

    Per RMSNorm: its input in fp32 (`x.float()`), the normalized activations (before the gain) and the
    output that the next matmuls read (autocast: one bf16 cast per matmul); 2 fp32 reciprocal norms.
    Attention: rotated q, k and v and the output (the SDPA kernel keeps these, never the T×T scores),
    and the log-sum-exp per query and head. SwiGLU: w1·x, w3·x, silu(w1·x) and the product.
    """
    d, kv, f = args.dim, args.kv_heads * args.head_dim, args.hidden_dim
    c = p.compute
    attn_inputs, ffn_inputs = (3, 2) if p.casts_per_matmul else (1, 1)
    norms = 2 * (FP32 * d + p.residual * d + FP32)
    matmul_inputs = (attn_inputs + ffn_inputs) * c * d
    attention = c * (d + 2 * kv) + c * d + FP32 * args.n_heads
    swiglu = 4 * c * f
    return norms + matmul_inputs + attention + swiglu


def head_peak_bytes(args: ModelArgs, p: Precision) -> int:
    """Bytes per token at the peak of the loss's backward: the final norm's saved tensors, the token ids
    (embedding and targets, int64), the logits (which the training loop holds), their fp32 log-softmax,
    and the two fp32 (tokens × vocab) gradients that exist together inside log-softmax's backward."""
    d, v = args.dim, args.vocab_size
    final_norm = FP32 * d + p.residual * d + FP32 + p.compute * d
    return final_norm + 2 * 8 + p.compute * v + FP32 * v + 2 * FP32 * v


def block_backward_bytes(args: ModelArgs, p: Precision) -> int:
    """Bytes per token alive on top of a block's saved tensors inside its backward pass (measured peak: at
    SwiGLU's product, the gradients of its two factors), the residual gradient, and the logits the loop holds."""
    return 2 * p.compute * args.hidden_dim + FP32 * args.dim + p.compute * args.vocab_size


def activation_bytes(args: ModelArgs, tokens: int, p: Precision, checkpointing: bool) -> int:
    """Peak activation bytes of one forward + backward over `tokens` tokens (micro-batch × sequence)."""
    block = block_activation_bytes(args, p)
    kept = p.residual * args.dim if checkpointing else block  # per block, through the backward pass
    recomputed = block if checkpointing else 0
    per_token = args.n_layers * kept + max(head_peak_bytes(args, p), recomputed + block_backward_bytes(args, p))
    return tokens * per_token


@dataclass
class MemoryPlan:
    """Bytes per GPU. `total`/`total_ac`: everything at once, without/with activation checkpointing
    (an upper bound: gradients are created during the backward pass while activations are freed)."""

    weights: int
    gradients: int
    optimizer: int
    buffers: int  # rope table; autocast weight copies; FSDP2 gathered units; DDP gradient buckets
    buffers_ac: int
    activations: int
    activations_ac: int
    capacity: int | None = None  # the GPU's memory, if one was named

    @property
    def states(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.states + self.buffers + self.activations

    @property
    def total_ac(self) -> int:
        return self.states + self.buffers_ac + self.activations_ac

    def fits(self, checkpointing: bool) -> bool | None:
        """Whether it fits in 90% of the GPU's memory (CUDA context, allocator fragmentation, NCCL)."""
        if self.capacity is None:
            return None
        return (self.total_ac if checkpointing else self.total) <= 0.9 * self.capacity

    def to_dict(self) -> dict:
        return {**asdict(self), "states": self.states, "total": self.total, "total_ac": self.total_ac}


def memory_plan(args: ModelArgs, *, seq_len: int, micro_batch: int, dtype: str = "bf16", parallel: str = "fsdp",
                gpus: int = 1, tp: int = 1, capacity: int | None = None, fused_adamw: bool | None = None) -> MemoryPlan:
    """Bytes per GPU of training `args` on `gpus` GPUs with `micro_batch` × `seq_len` tokens per GPU step.

    parallel: none | ddp (replicated states) | fsdp (FSDP2: states sharded over the data-parallel ranks).
    tp: tensor-parallel degree, the hook for TP × FSDP plans: an ideal Megatron-style split with sequence
    parallelism (every matrix and every activation divided by tp; the data-parallel degree is gpus / tp).
    """
    if parallel not in ("none", "ddp", "fsdp"):
        raise LlamalabError(f"parallel must be none, ddp or fsdp, got {parallel!r}")
    if tp < 1 or gpus < 1 or gpus % tp:
        raise LlamalabError(f"tensor-parallel degree {tp} must divide the GPU count {gpus}")
    p = precision(dtype, parallel)
    shards = gpus // tp if parallel == "fsdp" else 1
    shapes = parameter_shapes(args)
    numel = sum(math.prod(s) for _, s in shapes)
    local = sum(sharded_numel(s, shards) for _, s in shapes) // tp
    fused = parallel != "fsdp" if fused_adamw is None else fused_adamw  # the trainer's choice (train/optim.py)
    weights = gradients = FP32 * local
    optimizer = 2 * FP32 * local + (FP32 * len(shapes) if fused else 0)  # fused AdamW keeps `step` on device
    rope = 8 * min(seq_len, args.max_seq_len) * args.head_dim // 2  # complex64 table: the positions trained on
    buffers = buffers_ac = rope
    linear = matmul_params(args) // tp
    block = sum(math.prod(s) for n, s in shapes if n.startswith("layers.0.")) // tp
    if p.weight_copies:  # bf16 copies of the weights: all until the backward; with AC one block + the output
        buffers += 2 * linear
        buffers_ac += 2 * (block + args.vocab_size * args.dim // tp)
    if parallel == "fsdp" and shards > 1:  # the root unit stays gathered; two blocks gathered; one unit's
        root = (numel - args.n_layers * block * tp) // tp  # unsharded gradient (compute dtype + fp32 copy)
        gathered = p.compute * (root + 2 * block) + (p.compute + FP32) * max(root, block)
        buffers, buffers_ac = buffers + gathered, buffers_ac + gathered
    if parallel == "ddp" and gpus > 1:  # DDP's gradient buckets: a second copy of the gradients
        buffers, buffers_ac = buffers + gradients, buffers_ac + gradients
    tokens = micro_batch * seq_len
    return MemoryPlan(weights, gradients, optimizer, buffers, buffers_ac,
                      activation_bytes(args, tokens, p, False) // tp, activation_bytes(args, tokens, p, True) // tp,
                      capacity)
