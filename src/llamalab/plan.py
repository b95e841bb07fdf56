"""Back-of-the-envelope numbers from the paper: parameters, training FLOPs (6·N·D)."""

from __future__ import annotations

from .config import ModelArgs


def count_params(args: ModelArgs) -> int:
    """Exact parameter count, from the model itself built on the meta device (no memory)."""
    import torch

    from .model import Transformer

    with torch.device("meta"):
        return Transformer(args).num_params()


def training_flops(n_params: int, n_tokens: int) -> float:
    """≈ 6·N·D: forward (2·N·D) plus backward (4·N·D)."""
    return 6.0 * n_params * n_tokens
