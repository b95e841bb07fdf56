"""Group-wise integer codes for a weight matrix: w[n, k] = q[n, k] · scale[n, k // g] + zero[n, k // g].

One canonical form for every weight-only format we read or write:
- GGUF Q8_0 (llama.cpp): blocks of 32, q int8, w = q · d                  (scale = d, zero = 0)
- GGUF Q4_0: blocks of 32, q in 0..15, w = (q - 8) · d                    (scale = d, zero = -8d)
- GGUF Q4_1: blocks of 32, q in 0..15, w = q · d + m                      (scale = d, zero = m)
- ours (`llamalab quantize` to a directory): 8 bits symmetric (int8, zero = 0) or 4 bits with a
  minimum (like Q4_1), any group size that divides the row.
Blocks are decoded with numpy straight from the file's bytes: nothing is dequantized on the way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import LlamalabError

BLOCK = 32  # GGUF's block size for Q8_0 / Q4_0 / Q4_1
GGUF_TYPES = ("Q8_0", "Q4_0", "Q4_1")  # the quantized GGUF types we run without dequantizing


@dataclass
class GroupCodes:
    """Integer codes and per-group scale/zero of an (out, in) weight matrix."""

    q: torch.Tensor      # (out, in): int8 (8 bits) or uint8 holding 0..15 (4 bits)
    scale: torch.Tensor  # (out, in // group_size), float16 or float32
    zero: torch.Tensor   # (out, in // group_size)
    bits: int
    group_size: int
    # act-order (GPTQ's desc_act): the codes' columns are the weight's columns `perm` (groups contiguous in
    # that order), so W[:, perm] = the dequantized codes and y = x[..., perm] · codesᵀ; None: in order
    perm: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        g = self.group_size
        w = self.q.float().unflatten(-1, (-1, g)) * self.scale.float()[..., None] + self.zero.float()[..., None]
        w = w.flatten(-2)
        if self.perm is not None:  # back to the weight's own column order
            w = w[..., torch.argsort(self.perm)]
        return w.to(dtype)

    def rows(self, index: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """Dequantized rows `index` (any shape) → (*index.shape, in): an embedding lookup."""
        part = GroupCodes(self.q[index], self.scale[index], self.zero[index], self.bits, self.group_size, self.perm)
        return part.dequantize(dtype)


def from_gguf(data: np.ndarray, qtype: str, shape: tuple[int, int]) -> GroupCodes:
    """Decode the raw blocks of a Q8_0 / Q4_0 / Q4_1 tensor of `shape` (out, in)."""
    out, inp = shape
    if inp % BLOCK:
        raise LlamalabError(f"{qtype} tensor of shape {shape}: rows are not whole blocks of {BLOCK}")
    raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(out, inp // BLOCK, -1)
    d = raw[..., 0:2].copy().view(np.float16)[..., 0]
    if qtype == "Q8_0":
        q = torch.from_numpy(raw[..., 2:].copy().view(np.int8).reshape(out, inp))
        return GroupCodes(q, torch.from_numpy(d), torch.zeros(out, inp // BLOCK, dtype=torch.float16), 8, BLOCK)
    if qtype not in ("Q4_0", "Q4_1"):
        raise LlamalabError(f"GGUF type {qtype} cannot be run quantized; load it with --dtype float32")
    nibbles = raw[..., 4:] if qtype == "Q4_1" else raw[..., 2:]
    # byte j of a block holds element j (low nibble) and element j + 16 (high nibble)
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).reshape(out, inp)
    scale = torch.from_numpy(d)
    if qtype == "Q4_1":
        zero = torch.from_numpy(raw[..., 2:4].copy().view(np.float16)[..., 0])
    else:
        zero = -8 * scale
    return GroupCodes(torch.from_numpy(q), scale, zero, 4, BLOCK)


def to_gguf(codes: GroupCodes) -> tuple[np.ndarray, str]:
    """The inverse of `from_gguf` where the codes fit a GGUF block type: (raw blocks (out, bytes), type).
    Groups of 32 in column order; 8 bits without zeros → Q8_0; 4 bits with zero = −8·scale → Q4_0, else
    Q4_1 (its minimum m = zero, rounded to float16)."""
    out, inp = codes.shape
    if codes.group_size != BLOCK or codes.perm is not None or codes.bits not in (4, 8) or \
            (codes.bits == 8 and codes.zero.any()):
        raise LlamalabError(f"{codes.bits}-bit codes in groups of {codes.group_size}"
                            f"{' in act order' if codes.perm is not None else ''} do not fit a GGUF block type "
                            f"(Q8_0 / Q4_0 / Q4_1: groups of {BLOCK} in order, 8-bit ones symmetric)")
    d = codes.scale.to(torch.float16).numpy().reshape(out, -1, 1).view(np.uint8)
    if codes.bits == 8:
        return np.concatenate([d, codes.q.numpy().reshape(out, -1, BLOCK).view(np.uint8)], -1).reshape(out, -1), "Q8_0"
    q = codes.q.numpy().astype(np.uint8).reshape(out, -1, BLOCK)
    nibbles = q[..., :BLOCK // 2] | (q[..., BLOCK // 2:] << 4)  # byte j: element j low, element j + 16 high
    if torch.equal(codes.zero.float(), -8 * codes.scale.float()):
        return np.concatenate([d, nibbles], -1).reshape(out, -1), "Q4_0"
    m = codes.zero.to(torch.float16).numpy().reshape(out, -1, 1).view(np.uint8)
    return np.concatenate([d, m, nibbles], -1).reshape(out, -1), "Q4_1"


def quantize(w: torch.Tensor, bits: int, group_size: int) -> GroupCodes:
    """Round-to-nearest group-wise codes of a float (out, in) matrix: 8 bits symmetric (q = round(w / d),
    d = max|w| / 127), 4 bits asymmetric (q = round((w - min) / d), d = (max - min) / 15)."""
    if bits not in (4, 8):
        raise LlamalabError(f"--bits must be 8 or 4, got {bits}")
    out, inp = w.shape
    if group_size < 1 or inp % group_size:
        raise LlamalabError(f"group size {group_size} does not divide the row width {inp} of a "
                            f"{out}x{inp} weight; use a divisor of {inp} (32, 64 or 128 usually)")
    groups = w.detach().float().unflatten(-1, (-1, group_size))
    if bits == 8:
        scale = groups.abs().amax(-1) / 127
        q = torch.round(groups / torch.where(scale == 0, 1, scale)[..., None]).clamp(-127, 127).to(torch.int8)
        zero = torch.zeros_like(scale)
    else:
        lo, hi = groups.amin(-1), groups.amax(-1)
        scale = (hi - lo) / 15
        q = torch.round((groups - lo[..., None]) / torch.where(scale == 0, 1, scale)[..., None]).clamp(0, 15)
        q, zero = q.to(torch.uint8), lo
    return GroupCodes(q.flatten(-2), scale.to(torch.float16), zero.to(torch.float16), bits, group_size)


# ------------------------------------------------------------------ safetensors layout (`quantize` to a directory)
# A quantized matrix `<module>.weight` is stored as three tensors (documented in docs/quantized-layout.md):
#   <module>.qweight  8 bits: int8 (out, in);  4 bits: uint8 (out, in/2), column 2j in the low nibble, 2j+1 high
#   <module>.scales   float16 (out, in/group_size)
#   <module>.zeros    float16 (out, in/group_size)        w = qweight · scales + zeros, group-wise
SUFFIXES = ("qweight", "scales", "zeros")


def to_tensors(codes: GroupCodes) -> dict[str, torch.Tensor]:
    q = codes.q
    if codes.bits == 4:
        q = q.to(torch.uint8)
        q = q[:, 0::2] | (q[:, 1::2] << 4)
    return {"qweight": q.contiguous(), "scales": codes.scale.to(torch.float16).contiguous(),
            "zeros": codes.zero.to(torch.float16).contiguous()}


def from_tensors(t: dict[str, torch.Tensor], where) -> GroupCodes:
    """The inverse of `to_tensors`; bits and group size follow from the dtypes and shapes."""
    missing = [s for s in SUFFIXES if s not in t]
    if missing:
        raise LlamalabError(f"{where}: quantized weight lacks {', '.join(missing)}")
    q, scale, zero = t["qweight"], t["scales"], t["zeros"]
    if q.dtype == torch.uint8:
        q, bits = torch.stack([q & 0x0F, q >> 4], dim=-1).flatten(-2), 4
    elif q.dtype == torch.int8:
        bits = 8
    else:
        raise LlamalabError(f"{where}: qweight has dtype {q.dtype}; expected int8 (8 bits) or uint8 (4 bits packed)")
    if q.ndim != 2 or scale.shape != zero.shape or scale.ndim != 2 or scale.shape[0] != q.shape[0] \
            or scale.shape[1] == 0 or q.shape[1] % scale.shape[1]:
        raise LlamalabError(f"{where}: qweight {tuple(q.shape)}, scales {tuple(scale.shape)} and zeros "
                            f"{tuple(zero.shape)} do not fit together")
    return GroupCodes(q, scale, zero, bits, q.shape[1] // scale.shape[1])


def permute_rows(codes: GroupCodes, fn) -> GroupCodes:
    """The same codes with their rows reordered by `fn` (a function of an (out, X) matrix)."""
    return GroupCodes(fn(codes.q), fn(codes.scale), fn(codes.zero), codes.bits, codes.group_size, codes.perm)
