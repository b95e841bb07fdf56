"""Layers that keep their weights as group-wise integer codes and run them without a float copy.

`QuantLinear` runs y = x Wᵀ one of three ways (`path`):
- "int8" (CPU, 8-bit symmetric codes in groups of a multiple of 32: Q8_0, `quantize --bits 8`): our kernel
  (`int8_linear.cpp`, built once per machine by `cpu_kernel`), llama.cpp's Q8_0 arithmetic: the activations
  rounded to 8 bits per block of 32, integer dot products, float32 scales and sums; from `ggml.GEMM_ROWS`
  activation rows on (prefill) tiles of rows dequantized to bfloat16 and torch's bfloat16 GEMM (`int8_gemm`).
- "int4pack" (CPU, 4-bit codes; 8-bit ones the int8 kernel cannot take — asymmetric, a code of -128 — or
  where it cannot be built): PyTorch's int4 weight-only
  matmul (`_weight_int4pack_mm_for_cpu`), whose weights are w = (p - 8) · s + z, p in 0..15, with s, z per
  group in bfloat16 (its fast path):
  - 4-bit codes map onto it exactly: p = q, s = scale, z = zero + 8 · scale.
  - 8-bit codes are split into 4-bit halves, q = 16 · hi + lo, and each group of g codes becomes two groups of
    the kernel's, g high nibbles (p = hi + 8, s = 16·scale, z = 0) then g low ones (p = lo, s = scale,
    z = zero + 8·scale), against the group's activations twice: one int4 matmul of twice the width is the
    int8 product exactly.
  Activations enter in bfloat16 and the result returns in the input's dtype.
- "dequantize" (CUDA, odd shapes): the codes are dequantized per call to the activation dtype, run by F.linear.
3-bit codes (GPTQ) take the 4-bit route as they are (codes 0..7). Act-order codes (`GroupCodes.perm`) hold
the weight's columns permuted: the activations are gathered into that order before any of the three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernel, ggml
from .codes import GroupCodes

INT8_BLOCK = 32  # the int8 kernel's group sizes are multiples of its activation block
KERNEL_GROUPS = (32, 64, 128, 256)  # group sizes the int4 CPU kernel takes
PACK_ROWS = 64  # the kernel packs weight rows in tiles of 64
COMPUTE = torch.bfloat16


def _int4pack(p: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor):
    """(packed weight, (in/g, out, 2) scales-and-zeros) for `_weight_int4pack_mm_for_cpu`."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(p.to(torch.int32).contiguous(), 1)
    sz = torch.stack([scale.float().t(), zero.float().t()], dim=-1).to(COMPUTE).contiguous()
    return packed, sz


class QuantLinear(nn.Module):
    """y = x Wᵀ for W held as 8- or 4-bit group codes (no bias, like every LLaMA projection).

    `rows(index)` dequantizes only the rows asked for, which makes the same codes an embedding table
    (a tied output head and token embedding share one QuantLinear)."""

    def __init__(self, codes: GroupCodes):
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.bits, self.group_size = codes.bits, codes.group_size
        # act-order codes: the activations' columns are gathered into the codes' order first
        self.register_buffer("perm", codes.perm, persistent=False)
        cpu = codes.q.device.type == "cpu"
        if cpu and codes.bits == 8 and codes.group_size % INT8_BLOCK == 0 and not codes.zero.any() \
                and not (codes.q == -128).any() and cpu_kernel.available():
            self.path = "int8"
            self.register_buffer("q", codes.q.contiguous(), persistent=False)
            self.register_buffer("scale", codes.scale.float().contiguous(), persistent=False)
            return
        if not (cpu and codes.group_size in KERNEL_GROUPS and self.out_features % PACK_ROWS == 0):
            self.path = "dequantize"  # keep the codes, dequantize per call
            for name in ("q", "scale", "zero"):
                self.register_buffer(name, getattr(codes, name), persistent=False)
            return
        self.path = "int4pack"
        scale, zero = codes.scale.float(), codes.zero.float()
        if codes.bits <= 4:  # 4 bits (and 3, codes 0..7) map onto the kernel's nibbles as they are
            p, s, z = codes.q, scale, zero + 8 * scale
        else:  # each group of g codes becomes a group of high nibbles then a group of low nibbles: width 2·in
            q = codes.q.to(torch.int16).unflatten(-1, (-1, codes.group_size))
            p = torch.stack([(q >> 4) + 8, q & 15], dim=-2).flatten(-3)
            s = torch.stack([16 * scale, scale], dim=-1).flatten(-2)
            z = torch.stack([torch.zeros_like(scale), zero + 8 * scale], dim=-1).flatten(-2)
        packed, sz = _int4pack(p, s, z)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("sz", sz, persistent=False)

    def _codes(self) -> GroupCodes:
        # the int8 path holds no zeros: a broadcast view, so an embedding lookup allocates none for the whole table
        zero = self.scale.new_zeros(()).expand_as(self.scale) if self.path == "int8" else self.zero
        return GroupCodes(self.q, self.scale, zero, self.bits, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x[..., self.perm]
        if self.path == "int8":
            flat = x.reshape(-1, self.in_features).float().contiguous()
            op = torch.ops.llamalab.int8_gemm if flat.shape[0] >= ggml.GEMM_ROWS else torch.ops.llamalab.int8_linear
            y = op(flat, self.q, self.scale, self.group_size)
            return y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        if self.path == "dequantize":
            return F.linear(x, self._codes().dequantize(x.dtype))
        flat = x.reshape(-1, self.in_features).to(COMPUTE)
        if self.bits == 8:  # every group of activations twice, against the high then the low nibbles
            flat = flat.unflatten(-1, (-1, 1, self.group_size)).expand(-1, -1, 2, -1).flatten(-3)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.sz)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def rows(self, index: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """Dequantized weight rows W[index] → (*index.shape, in_features), in the codes' column order (an
        embedding's never permuted)."""
        if self.path != "int4pack":
            return self._codes().rows(index, dtype)
        width = self.in_features * (2 if self.bits == 8 else 1)
        w = _packed_rows(self.packed, self.sz, index, width, self.group_size)
        if self.bits == 8:  # high and low halves of each group back to one weight
            w = w.unflatten(-1, (-1, 2, self.group_size)).sum(-2).flatten(-2)
        return w.to(dtype)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """The weight in its own column order (an act-order layer's codes are stored permuted)."""
        device = (self.sz if self.path == "int4pack" else self.q).device
        w = self.rows(torch.arange(self.out_features, device=device), dtype)
        return w if self.perm is None else w[:, torch.argsort(self.perm)]

    def extra_repr(self) -> str:
        order = ", act-order" if self.perm is not None else ""
        return f"{self.in_features}, {self.out_features}, bits={self.bits}, group_size={self.group_size}, {self.path}{order}"


def _packed_rows(packed, sz, index, K: int, g: int) -> torch.Tensor:
    """Rows of an int4pack weight. The CPU layout is (N/64, K, 32) bytes: byte [b, k, j] holds row 64b + j
    in its low nibble and row 64b + 32 + j in its high nibble (PyTorch's `_convert_weight_to_int4pack_for_cpu`)."""
    tiles = packed.view(-1, K, PACK_ROWS // 2)
    block, j = index // PACK_ROWS, index % PACK_ROWS
    byte = tiles[block, :, j % (PACK_ROWS // 2)]  # (*index.shape, K)
    p = torch.where((j < PACK_ROWS // 2)[..., None], byte & 0x0F, byte >> 4).float() - 8
    s, z = sz[:, index].float().movedim(0, -2).unbind(-1)  # (*index.shape, K/g) each
    return (p.unflatten(-1, (-1, g)) * s[..., None] + z[..., None]).flatten(-2)


class QuantEmbedding(nn.Module):
    """Token embedding lookup from a QuantLinear's codes: only the looked-up rows are dequantized."""

    def __init__(self, table: QuantLinear, dtype=torch.float32):
        super().__init__()
        self.table, self.dtype = table, dtype
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table.rows(tokens, self.dtype)
