"""Float projections on CPU through our matrix-vector kernel: `FloatLinear`, `route(model)`.

Decoding one token reads every weight once, so its speed is the rate the weights stream from memory.
PyTorch's float32 matmul at batch 1 (MKL's GEMV) reads ~11 GB/s on a 2-core AMD EPYC that streams ~27 GB/s;
`float_linear.cpp` (built with the other CPU kernels by `cpu_kernel`) streams float32, bfloat16 and float16
weights at the read bandwidth, widening 16-bit weights in registers, and hands prompts (many rows) to
torch's float32 GEMM. So on CPU the default path is fast from the first token, without `--compile`'s wait.

`route(model)` swaps a loaded model's bias-free `nn.Linear` projections (blocks and output head) for
`FloatLinear`s holding the same weight tensor (a tied head stays tied), and a 16-bit token embedding for a
`FloatEmbedding` (its rows read in 16 bits, returned in float32). The model's math is unchanged: y = x Wᵀ in
float32. `llamalab.load` keeps a checkpoint's float16 / bfloat16 matrices 16-bit in memory when they run here
(half the bytes per token). Where a gradient is wanted (training, a LoRA being fitted) FloatLinear runs
F.linear instead, so autograd works as before. LLAMALAB_FLOAT_KERNEL=0 (or LLAMALAB_CPU_KERNEL=0, or no C++
compiler) keeps PyTorch's matmul and float32 weights.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernel

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HALF = (torch.bfloat16, torch.float16)
SKIP = ("lora_a", "lora_b")  # a LoRA's own small matrices stay as they are


def enabled(device) -> bool:
    """Do float projections on `device` run through the kernel (CPU, not switched off, the kernel built)?"""
    return (torch.device(device).type == "cpu" and os.environ.get("LLAMALAB_FLOAT_KERNEL", "1") != "0"
            and cpu_kernel.available())


class FloatLinear(nn.Module):
    """y = x Wᵀ (no bias) for W in float32, bfloat16 or float16, computed in float32; the result in x's dtype."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return F.linear(x, self.weight.to(x.dtype))  # autograd through torch's own matmul
        flat = x.reshape(-1, self.in_features).float().contiguous()
        y = torch.ops.llamalab.float_linear(flat, self.weight)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {str(self.weight.dtype).removeprefix('torch.')}"


class FloatEmbedding(nn.Module):
    """A token embedding whose table is 16-bit (shared with a tied FloatLinear head), looked up in `dtype`."""

    def __init__(self, weight: nn.Parameter, dtype=torch.float32):
        super().__init__()
        self.weight, self.dtype = weight, dtype
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight).to(self.dtype)


def _routable(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (type(module) is nn.Linear and module.bias is None and w.dtype in DTYPES and w.device.type == "cpu"
            and w.is_contiguous())


def route(model: nn.Module) -> int:
    """Swap `model`'s float projections for FloatLinear (and a 16-bit token embedding for FloatEmbedding)
    where the kernel runs; the number of layers swapped. Idempotent."""
    if not enabled(model.norm.weight.device):
        return 0
    swapped = 0
    for name, module in list(model.named_modules()):
        if _routable(module) and name.rsplit(".", 1)[-1] not in SKIP:
            model.set_submodule(name, FloatLinear(module.weight))
            swapped += 1
    table = getattr(model, "tok_embeddings", None)
    if type(table) is nn.Embedding and table.weight.dtype in HALF:
        model.tok_embeddings = FloatEmbedding(table.weight, model.norm.weight.dtype)
    return swapped
