"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"): the weights of one linear layer, rounded column by column, each
column's rounding error spread over the columns not yet rounded so that the layer's output on calibration
inputs X moves least: argmin ||WX − ŴX||².

- `Hessian`: H = 2/n Σ x xᵀ over the n calibration inputs x of the layer (a running mean, fp32).
- `gptq(w, H, ...)`: the paper's Algorithm 1: dead inputs (H_ii = 0) zeroed; optional act-order (columns in
  descending H_ii, the "desc_act" of the GPTQ checkpoints, each group then the next `group_size` columns of
  that order); dampening λ = 1% of mean(diag H); the upper Cholesky factor of H⁻¹; lazy batch updates of
  128 columns. A group's grid (scale, integer zero) is chosen when its first column comes up, from the
  weights as updated so far (GPTQ's `Quantizer.find_params`: the range widened to include 0; symmetric:
  zero = 2^(bits−1)). Scales are rounded to float16 before use, as the checkpoints store them.
- `round_to_nearest(w, ...)`: the same grid without the error feedback (GPTQ with H = I), the baseline.

The result is `GroupCodes` (w = q · scale + zero per group, zero = −z · scale for the integer zero z), with
`perm` set under act-order: codes kept in act order, so groups are contiguous. A group size that does not
divide the width leaves a shorter last group (as AutoGPTQ does: SmolLM2's width 576 is 4.5 groups of 128);
the codes then hold groups of gcd(group size, width) columns, each group's grid repeated over its parts.
"""

from __future__ import annotations

import math

import torch

from ..errors import LlamalabError
from .codes import GroupCodes

BLOCK = 128  # lazy batch: columns rounded together before the rest of the matrix is updated
DAMP = 0.01  # λ = 1% of the mean diagonal of H
BITS = (3, 4, 8)
GROUPS = (32, 64, 128)  # divisors of BLOCK: a group never straddles two lazy batches


class Hessian:
    """H = 2/n Σ x xᵀ over every input row x fed to `add` (float32, (in, in))."""

    def __init__(self, columns: int, device="cpu"):
        self.H = torch.zeros(columns, columns, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.H.shape[0]).float()
        m = x.shape[0]
        self.H.mul_(self.n / (self.n + m))
        self.n += m
        x = x * (2 / self.n) ** 0.5
        self.H.addmm_(x.t(), x)


def check(w: torch.Tensor, bits: int, group_size: int, where: str = "a") -> None:
    if bits not in BITS:
        raise LlamalabError(f"--bits must be one of {', '.join(map(str, BITS))} for GPTQ, got {bits}")
    if group_size not in GROUPS:
        raise LlamalabError(f"--group-size must be one of {', '.join(map(str, GROUPS))}, got {group_size}")
    if w.shape[0] % 32 or w.shape[1] % 32:
        raise LlamalabError(f"--group-size {group_size} cannot split {where} {w.shape[0]}x{w.shape[1]} weight: "
                            "GPTQ's layout packs rows and columns in 32-bit words, so both must be multiples of 32")


def groups_of(scale: torch.Tensor, group_size: int, columns: int) -> tuple[torch.Tensor, int]:
    """Per-group values (out, ⌈columns / group_size⌉) — the last group shorter where group_size does not
    divide the width, as AutoGPTQ allows — as equal groups of d = gcd(group_size, columns) columns
    (each value repeated for its d-column parts): (out, columns / d), d."""
    d = math.gcd(group_size, columns)
    return scale.repeat_interleave(group_size // d, dim=1)[:, :columns // d], d


def grid(w: torch.Tensor, bits: int, sym: bool, mse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, integer zero) per row of the group `w` (out, g): GPTQ's min/max grid over a range that
    includes 0; the scale rounded to float16. mse: the range shrunk by the factor p in 1, 0.99, ..., 0.21
    whose grid rounds the row with the least Σ|error|^2.4 (GPTQ's `Quantizer(mse=True)`, its defaults)."""
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    if not mse:
        return _grid(lo, hi, bits, sym)
    maxq = 2 ** bits - 1
    best = torch.full_like(lo, float("inf"))
    scale, zero = torch.empty_like(lo), torch.empty_like(lo)
    for i in range(80):
        s, z = _grid((1 - i / 100) * lo, (1 - i / 100) * hi, bits, sym)
        err = ((_round(w, s[:, None], z[:, None], maxq) - z[:, None]) * s[:, None] - w).abs().pow(2.4).sum(1)
        better = err < best
        best, scale, zero = torch.where(better, err, best), torch.where(better, s, scale), torch.where(better, z, zero)
    return scale, zero


def _grid(lo: torch.Tensor, hi: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    maxq = 2 ** bits - 1
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
    empty = (lo == 0) & (hi == 0)
    lo, hi = torch.where(empty, -1.0, lo), torch.where(empty, 1.0, hi)
    scale = ((hi - lo) / maxq).half().float()
    scale = torch.where(scale == 0, torch.finfo(torch.float16).tiny, scale)
    zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def _round(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    return (torch.round(w / scale) + zero).clamp(0, maxq)


def _codes(q, scales, zeros, bits, group_size, perm) -> GroupCodes:
    scale, d = groups_of(torch.stack(scales, 1), group_size, q.shape[1])
    return from_unsigned(q, groups_of(torch.stack(zeros, 1), group_size, q.shape[1])[0], scale, bits, d, perm)


def from_unsigned(q: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int,
                  perm: torch.Tensor | None = None) -> GroupCodes:
    """GroupCodes of unsigned codes q (out, in) with w = (q − z) · scale, z and scale (out, in / group_size).
    8 bits are stored signed (q − 128, like our other int8 codes): zero = (128 − z) · scale. Zeros stay
    float32, so z is exactly recoverable (`unsigned`)."""
    scale = scale.half().float()
    z = z.float()
    if bits == 8:
        return GroupCodes((q - 128).to(torch.int8), scale.half(), (128 - z) * scale, bits, group_size, perm)
    return GroupCodes(q.to(torch.uint8), scale.half(), -z * scale, bits, group_size, perm)


def unsigned(codes: GroupCodes) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, z) as GPTQ keeps them: unsigned codes 0..2^bits−1 and the integer zero per group,
    w = (q − z) · scale (the inverse of `from_unsigned`)."""
    scale = codes.scale.float()
    offset = 128 if codes.bits == 8 else 0
    z = offset - torch.round(codes.zero.float() / torch.where(scale == 0, 1, scale))
    return codes.q.to(torch.int32) + offset, z.to(torch.int32)


def _inverse_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor of (H + λI)⁻¹, λ = damp · mean(diag H)."""
    H = H.clone()
    H.diagonal().add_(damp * H.diagonal().mean())
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


@torch.no_grad()
def gptq(w: torch.Tensor, H: torch.Tensor, *, bits: int = 4, group_size: int = 128, sym: bool = False,
         act_order: bool = False, damp: float = DAMP, mse: bool = False,
         static_groups: bool = False) -> GroupCodes:
    """GPTQ codes of the (out, in) weight `w` for the layer-input Hessian `H` (in, in). static_groups: every
    group's grid from the weights before any update (AutoGPTQ's `static_groups`) instead of as updated."""
    check(w, bits, group_size)
    W = w.detach().float().clone()
    H = H.float().clone()
    columns, maxq = W.shape[1], 2 ** bits - 1
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    Hinv = _inverse_factor(H, damp)
    Q = torch.zeros_like(W)
    scales, zeros = [], []
    fixed = [grid(g, bits, sym, mse) for g in W.split(group_size, dim=1)] if static_groups else None
    for i1 in range(0, columns, BLOCK):
        i2 = min(i1 + BLOCK, columns)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if i % group_size == 0:  # a group starts: its grid from the weights as updated so far
                scale, zero = fixed[(i1 + i) // group_size] if fixed else grid(W1[:, i:i + group_size], bits, sym, mse)
                scales.append(scale)
                zeros.append(zero)
            q = _round(W1[:, i], scale, zero, maxq)
            Q[:, i1 + i] = q
            err = (W1[:, i] - (q - zero) * scale) / Hinv1[i, i]
            W1[:, i:].sub_(err[:, None] * Hinv1[i, i:][None])
            Err1[:, i] = err
        W[:, i2:].sub_(Err1 @ Hinv[i1:i2, i2:])
    return _codes(Q, scales, zeros, bits, group_size, perm)


def round_to_nearest(w: torch.Tensor, *, bits: int = 4, group_size: int = 128, sym: bool = False,
                     mse: bool = False) -> GroupCodes:
    """The same grid as `gptq`, each weight rounded on its own (no error feedback)."""
    check(w, bits, group_size)
    w = w.detach().float()
    scales, zeros, qs = [], [], []
    for g in w.split(group_size, dim=1):
        scale, zero = grid(g, bits, sym, mse)
        scales.append(scale)
        zeros.append(zero)
        qs.append(_round(g, scale[:, None], zero[:, None], 2 ** bits - 1))
    return _codes(torch.cat(qs, 1), scales, zeros, bits, group_size, None)
