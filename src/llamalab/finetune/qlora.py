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

import contextlib
import logging
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..device import has_cxx_compiler
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


class _FrozenMatmul(torch.autograd.Function):
    """x Wᵀ for a frozen low-precision layer: W is rebuilt from its codes in forward and again in backward
    (never stored for backward), and gets no gradient."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return F.linear(x, layer.dequantize().to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.layer.dequantize().to(grad.dtype), None


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
        return _FrozenMatmul.apply(x, self)


warnings.filterwarnings("ignore", message="NF4Tensor does not implement _stable_hash_for_caching")  # compile cache


def _nf4_dequantize(weight) -> torch.Tensor:
    return weight.get_original_weight()


class NF4Linear(nn.Module):
    """A frozen linear layer held as torchao's NF4Tensor. Its dequantization runs through torch.compile where
    a compiler is available (bit-identical to torchao's eager code and ~7x faster on CPU, where it dominates
    the step); F.linear on the NF4Tensor itself would dequantize eagerly."""

    dequantize_fn = None

    def __init__(self, weight: torch.Tensor, to_nf4):
        super().__init__()
        w = weight.detach().contiguous()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.weight = nn.Parameter(to_nf4(w, 64, nf4_scaler_block(w.numel())), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        if NF4Linear.dequantize_fn is None:
            NF4Linear.dequantize_fn = (torch.compile(_nf4_dequantize, dynamic=True) if _compiles(self.weight.device)
                                       else _nf4_dequantize)
        return NF4Linear.dequantize_fn(self.weight)

    def forward(self, x):
        return _FrozenMatmul.apply(x, self)


def base_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every nn.Linear of the blocks that is not a LoRA matrix."""
    out = []
    for block in model.layers:
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear) and name not in ("lora_a", "lora_b"):
                    out.append((parent, name, child))
    return out


def _compiles(device: torch.device) -> bool:
    return device.type != "cpu" or has_cxx_compiler()


@contextlib.contextmanager
def _compiled_code_search(enabled: bool):
    """While quantizing, torchao's nearest-code search (NF4Tensor.convert_to_norm_float_weight, most of the
    time) runs through torch.compile: the same codes, ~3x faster on CPU."""
    from torchao.quantization import NF4Tensor

    original = NF4Tensor.__dict__.get("convert_to_norm_float_weight")
    if not enabled or not isinstance(original, staticmethod):
        yield
        return
    NF4Tensor.convert_to_norm_float_weight = staticmethod(torch.compile(original.__func__, dynamic=True))
    try:
        yield
    finally:
        NF4Tensor.convert_to_norm_float_weight = original


@torch.no_grad()
def quantize_base(model: nn.Module, kind: str) -> None:
    """Replace the blocks' frozen linear layers by nf4 / int8 ones, in place."""
    linears = base_linears(model)
    if kind == "nf4":
        to_nf4 = _nf4()
        with _compiled_code_search(bool(linears) and _compiles(linears[0][2].weight.device)):
            for parent, name, layer in linears:
                _check_frozen(name, layer)
                setattr(parent, name, NF4Linear(layer.weight, to_nf4))
        return
    for parent, name, layer in linears:
        _check_frozen(name, layer)
        setattr(parent, name, Int8Linear(layer.weight))


def _check_frozen(name: str, layer: nn.Linear) -> None:
    if layer.weight.requires_grad:
        raise LlamalabError(f"cannot quantize {name}: it is being trained (only a frozen base is quantized)")


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds on this rank (an FSDP2 shard's local part), counting the inner tensors of a tensor
    subclass (an NF4Tensor's codes and scales)."""
    if hasattr(t, "to_local"):
        t = t.to_local()
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
