"""AdamW and the learning-rate schedule of the paper (§2.3).

"AdamW with β1 = 0.9, β2 = 0.95 ... a cosine learning rate schedule, such that the final learning rate
is equal to 10% of the maximal learning rate. We use a weight decay of 0.1 and gradient clipping of 1.0.
We use 2,000 warmup steps."
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_at(step: int, *, peak: float, warmup: int, max_steps: int, min_ratio: float = 0.1, refits=()) -> float:
    """Learning rate for optimizer update `step` (0-based).

    Linear warmup: peak·(step+1)/warmup for the first `warmup` updates; then cosine from peak at
    `step = warmup` down to min_ratio·peak at `step = max_steps` (`refits`: see `cosine_progress`).
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = cosine_progress(step, warmup, max_steps, refits)
    floor = min_ratio * peak
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def cosine_progress(step: int, warmup: int, max_steps: int, refits=()) -> float:
    """How far the cosine is at `step`, 0..1: (step − warmup) / (max_steps − warmup). `refits`: a run whose
    length was re-planned, [(k, n), ...] in order — from update k on it ends at n instead: the rest of the
    cosine is compressed into k..n, p(k) + (1 − p(k))·(step − k)/(n − k), so the rate stays continuous and
    still reaches its floor at the last step. A re-fit during the warmup gives exactly the plain schedule of
    n steps."""
    start, done, end = warmup, 0.0, max_steps
    for k, n in refits:
        if step < k:
            break
        k = max(k, warmup)
        done += (1.0 - done) * min(1.0, max(0, k - start) / max(1, end - start))
        start, end = k, n
    return min(1.0, done + (1.0 - done) * max(0, step - start) / max(1, end - start))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on every matrix (linear layers and the embeddings), none on the 1-D RMSNorm gains
    (the model has no biases) — the nanoGPT/torchtitan rule, as the paper does not decay norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA; ~5x faster than foreach on CPU), or the multi-tensor
    foreach update for FSDP2's sharded DTensor parameters."""
    from torch.distributed.tensor import DTensor

    groups = param_groups(model, weight_decay)
    sharded = any(isinstance(p, DTensor) for g in groups for p in g["params"])
    impl = {"foreach": True} if sharded else {"fused": True}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **impl)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
