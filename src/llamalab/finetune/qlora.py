"""QLoRA (Dettmers et al. 2023): the frozen base held in 4-bit NormalFloat with double quantization, LoRA on
top in full precision; gradients flow through the dequantized base to the adapters, never into the base.

nf4   torchao's NF4Tensor (what torchtune builds QLoRA on): blocks of 64 weights share an absmax scale; the
      scales, minus their mean, are quantized again to int8 in blocks of up to 256 (the paper's double
      quantization); F.linear dequantizes on the fly. A layer whose block count 256 does not divide (SmolLM2's
      576-wide ones) uses the largest power-of-two scale block that does.
int8  one absmax scale per output row, weights as int8 (the vector-wise quantization of LLM.int8, without
      its outlier split), dequantized on the fly in forward and again in backward.

Every linear layer of the blocks is quantized (embeddings and norms stay as they are), as in the paper.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LlamalabError


def _nf4():
    """torchao's `to_nf4`, imported without its start-up chatter (optional CUDA kernels it cannot load)."""
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        from torchao.quantization import to_nf4
    except ImportError:
        raise LlamalabError("quantize_base=nf4 needs torchao: pip install torchao (or llamalab[qlora])") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return to_nf4


def nf4_scaler_block(numel: int, block: int = 64) -> int:
    """The second-level (scale) block: 256 as in the paper, or the largest power of two dividing the block count."""
    if numel % block:
        raise LlamalabError(f"a weight of {numel} elements is not a whole number of {block}-element NF4 blocks")
    n_blocks, size = numel // block, 256
    while n_blocks % size:
        size //= 2
    return size


class _Int8Matmul(torch.autograd.Function):
    """x Wᵀ with W = q · scale rebuilt in forward and again in backward (never stored for backward)."""

    @staticmethod
    def forward(ctx, x, q, scale):
        ctx.save_for_backward(q, scale)
        return F.linear(x, q.to(x.dtype) * scale.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        q, scale = ctx.saved_tensors
        return grad @ (q.to(grad.dtype) * scale.to(grad.dtype)), None, None


class Int8Linear(nn.Module):
    """A frozen linear layer stored as int8 rows with one fp32 absmax scale each."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.weight = nn.Parameter(torch.round(w / scale).clamp(-127, 127).to(torch.int8), requires_grad=False)
        self.register_buffer("scale", scale, persistent=False)

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.scale

    def forward(self, x):
        return _Int8Matmul.apply(x, self.weight, self.scale)


def base_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every linear layer of the blocks that is not a LoRA matrix."""
    out = []
    for block in model.layers:
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear) and name not in ("lora_a", "lora_b"):
                    out.append((parent, name, child))
    return out


@torch.no_grad()
def quantize_base(model: nn.Module, kind: str) -> None:
    """Replace the blocks' frozen linear weights by their nf4 / int8 form, in place."""
    to_nf4 = _nf4() if kind == "nf4" else None
    for parent, name, layer in base_linears(model):
        if layer.weight.requires_grad:
            raise LlamalabError(f"cannot quantize {name}: it is being trained (only a frozen base is quantized)")
        if kind == "nf4":
            w = layer.weight.detach().contiguous()
            layer.weight = nn.Parameter(to_nf4(w, 64, nf4_scaler_block(w.numel())), requires_grad=False)
        else:
            setattr(parent, name, Int8Linear(layer.weight))


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds, counting the inner tensors of a tensor subclass (an NF4Tensor's codes and scales)."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def frozen_bytes(model: nn.Module) -> int:
    """Memory of the frozen (base) parameters and buffers of the blocks and embeddings, each counted once."""
    seen, total = set(), 0
    for t in [p for p in model.parameters() if not p.requires_grad] + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += tensor_bytes(t)
    return total
