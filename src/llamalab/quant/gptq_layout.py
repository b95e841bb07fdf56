"""The GPTQ checkpoint layout of the Hugging Face ecosystem (AutoGPTQ, GPTQModel, transformers/optimum):
each quantized `<module>.weight` of shape (out, in) is four tensors

    qweight  int32 (in · bits / 32, out)    the codes q[n, k] of W, transposed: along `in`, a little-endian
                                             bit stream of `bits`-bit values in 32-bit words (8 per word at
                                             4 bits, 4 at 8; at 3 bits 32 values span 3 words)
    qzeros   int32 (groups, out · bits / 32) the integer zeros z, packed the same way along `out`
    scales   float16 (groups, out)
    g_idx    int32 (in,)                     the group of each input column

    W[n, k] = scales[g, n] · (q[n, k] − z[g, n]),  g = g_idx[k]

`checkpoint_format` "gptq" (AutoGPTQ's, the hubs' usual) stores z − 1 (modulo 2^bits, as AutoGPTQ's kernels
read it back); "gptq_v2" (GPTQModel's internal one) stores z. Symmetric checkpoints have z = 2^(bits−1).
Without act-order g_idx[k] = k // group_size; with it (`desc_act`), the columns of each group are scattered.

Reading keeps the codes (`GroupCodes`, no float copy). The columns are sorted by group (stable); a
scattered g_idx (act-order) makes that order `GroupCodes.perm`: the layer gathers its activations in that
order, so its groups are contiguous. Groups of unequal sizes (a shorter last group where the group size does
not divide the width, as AutoGPTQ writes them) are held as parts of gcd(sizes) columns, each group's scale
and zero repeated over its parts; where that gcd is below 16 (a g_idx no tool writes) that layer alone is
dequantized to float.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..bounded import read_json
from ..errors import LlamalabError
from .codes import GroupCodes
from .gptq import from_unsigned, unsigned

PARTS = ("qweight", "qzeros", "scales", "g_idx")
MIN_PART = 16  # groups that only split into parts smaller than this are dequantized instead
KERNEL_PART = 128  # larger groups are held as parts of at most this (same values, the kernel's group sizes)
FORMATS = ("gptq", "gptq_v2")


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """(n, m) unsigned values < 2^bits → (n · bits / 32, m) int32: each column a little-endian bit stream."""
    n, m = values.shape
    v = values.numpy().astype(np.uint64).reshape(n // 32, 32, m)
    words = np.zeros((n // 32, bits, m), dtype=np.uint64)
    for k in range(32):
        word, shift = divmod(k * bits, 32)
        words[:, word] |= (v[:, k] << np.uint64(shift)) & np.uint64(0xFFFFFFFF)
        if shift + bits > 32:  # the value's high bits open the next word
            words[:, word + 1] |= v[:, k] >> np.uint64(32 - shift)
    return torch.from_numpy(words.reshape(n // 32 * bits, m).astype(np.uint32).view(np.int32))


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of `pack`: (n · bits / 32, m) int32 → (n, m) int32 values."""
    rows, m = packed.shape
    words = packed.numpy().view(np.uint32).astype(np.uint64).reshape(rows // bits, bits, m)
    out = np.zeros((rows // bits, 32, m), dtype=np.uint64)
    for k in range(32):
        word, shift = divmod(k * bits, 32)
        value = words[:, word] >> np.uint64(shift)
        if shift + bits > 32:
            value |= words[:, word + 1] << np.uint64(32 - shift)
        out[:, k] = value & np.uint64(2 ** bits - 1)
    return torch.from_numpy(out.reshape(rows // bits * 32, m).astype(np.int32))


def to_tensors(codes: GroupCodes, group_size: int | None = None) -> dict[str, torch.Tensor]:
    """`qweight`, `qzeros`, `scales`, `g_idx` of the codes, checkpoint_format "gptq" (zeros stored − 1).
    group_size: the checkpoint's (default the codes'); codes whose groups are parts of it (a shorter last
    group, `gptq.groups_of`) keep one scale per group of group_size."""
    q, z = unsigned(codes)
    out, inp = q.shape
    size = group_size or codes.group_size
    step = size // codes.group_size
    z, scale = z[:, ::step], codes.scale[:, ::step]
    group = torch.arange(inp, dtype=torch.int32) // size
    if codes.perm is not None:  # back to the weight's column order; g_idx says where each column's group is
        inverse = torch.argsort(codes.perm)
        q, group = q[:, inverse], group[inverse]
    return {"qweight": pack(q.t().contiguous(), codes.bits),
            "qzeros": pack(((z - 1) & (2 ** codes.bits - 1)).contiguous(), codes.bits).t().contiguous(),
            "scales": scale.t().to(torch.float16).contiguous(), "g_idx": group}


def _shapes(t: dict, bits: int, where) -> tuple[int, int, int]:
    qweight, qzeros, scales = t["qweight"], t["qzeros"], t["scales"]
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32 or qweight.ndim != 2 or qzeros.ndim != 2:
        raise LlamalabError(f"{where}: qweight {qweight.dtype} and qzeros {qzeros.dtype} must be 2-d int32 "
                            "(the GPTQ layout); the checkpoint is damaged or not GPTQ")
    inp, out = qweight.shape[0] * 32 // bits, qweight.shape[1]
    groups = scales.shape[0] if scales.ndim == 2 else 0
    g_idx = t.get("g_idx")
    if qweight.shape[0] * 32 % bits or scales.shape != (groups, out) or groups == 0 or \
            tuple(qzeros.shape) != (groups, out * bits // 32) or (g_idx is not None and tuple(g_idx.shape) != (inp,)):
        raise LlamalabError(f"{where}: qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)}, scales "
                            f"{tuple(scales.shape)}{'' if g_idx is None else f', g_idx {tuple(g_idx.shape)}'} do "
                            f"not fit together at {bits} bits; the checkpoint is damaged or its config is wrong")
    return inp, out, groups


def from_tensors(t: dict[str, torch.Tensor], bits: int, fmt: str, where,
                 group_size: int = -1) -> GroupCodes | torch.Tensor:
    """GroupCodes of one module's GPTQ tensors (bits and group size from the quantization config, the latter
    only for a checkpoint without g_idx), or its float32 weight where its g_idx does not form groups the
    codes can hold (see the module's docstring)."""
    missing = [p for p in PARTS[:3] if p not in t]
    if missing:
        raise LlamalabError(f"{where}: GPTQ weight lacks {', '.join(missing)}")
    inp, out, groups = _shapes(t, bits, where)
    g_idx = t["g_idx"].long() if t.get("g_idx") is not None else \
        torch.arange(inp) // (group_size if group_size and group_size > 0 else inp)
    if len(g_idx) and (g_idx.min() < 0 or g_idx.max() >= groups):
        raise LlamalabError(f"{where}: g_idx holds group {int(g_idx.max() if g_idx.max() >= groups else g_idx.min())} "
                            f"outside 0..{groups - 1}; the checkpoint is damaged")
    q = unpack(t["qweight"], bits).t()  # (out, in)
    z = unpack(t["qzeros"].t().contiguous(), bits)  # (out, groups)
    z = z if fmt == "gptq_v2" else (z + 1) & (2 ** bits - 1)
    scale = t["scales"].float().t()
    counts = torch.bincount(g_idx, minlength=groups)
    d = math.gcd(*counts.tolist())  # the largest part size every group splits into
    if math.gcd(d, KERNEL_PART) >= 32:  # parts the int4 kernel takes (a per-row checkpoint: 128 columns)
        d = math.gcd(d, KERNEL_PART)
    if d < MIN_PART:  # irregular groups: this layer as float
        return scale[:, g_idx] * (q - z[:, g_idx]).float()
    perm = None if bool((g_idx[1:] >= g_idx[:-1]).all()) else torch.sort(g_idx, stable=True).indices
    parts = counts // d  # each group's value repeated over its parts of d columns
    return from_unsigned(q if perm is None else q[:, perm], z.repeat_interleave(parts, dim=1),
                         scale.repeat_interleave(parts, dim=1), bits, d, perm)


def quantize_config(bits: int, group_size: int, sym: bool, act_order: bool, damp: float) -> dict:
    """`quantize_config.json` as AutoGPTQ writes it (also config.json's `quantization_config`)."""
    return {"bits": bits, "group_size": group_size, "damp_percent": damp, "desc_act": act_order,
            "static_groups": False, "sym": sym, "true_sequential": True, "model_name_or_path": None,
            "model_file_base_name": "model", "quant_method": "gptq", "checkpoint_format": "gptq"}


def read_config(cfg: dict, where) -> tuple[int, str]:
    """(bits, checkpoint_format) of a GPTQ quantization config, checked."""
    bits, fmt, group = cfg.get("bits"), cfg.get("checkpoint_format", "gptq"), cfg.get("group_size", -1)
    if bits not in (2, 3, 4, 8) or isinstance(bits, bool):
        raise LlamalabError(f"{where}: GPTQ bits {bits!r} unsupported (2, 3, 4 or 8)")
    if not isinstance(group, int) or isinstance(group, bool) or (group < 1 and group != -1):
        raise LlamalabError(f"{where}: GPTQ group_size {group!r} is not a positive integer or -1")
    if fmt not in FORMATS:
        raise LlamalabError(f"{where}: GPTQ checkpoint_format {fmt!r} unsupported ({', '.join(FORMATS)})")
    return bits, fmt


def describe(qcfg: dict) -> str:
    """One line for `llamalab info`."""
    group = qcfg.get("group_size", -1)
    return (f"GPTQ {qcfg.get('bits')}-bit, {'per row' if group in (-1, None) else f'group {group}'}, "
            f"{'symmetric' if qcfg.get('sym', True) else 'asymmetric (zero points)'}"
            f"{', act-order (desc_act, g_idx)' if qcfg.get('desc_act') else ''}, "
            f"checkpoint_format {qcfg.get('checkpoint_format', 'gptq')}")


def config_of(cfg: dict, directory) -> dict | None:
    """The GPTQ quantization config of an HF directory: config.json's `quantization_config`, else AutoGPTQ's
    `quantize_config.json`; None when the checkpoint is not GPTQ."""

    q = cfg.get("quantization_config")
    file = directory / "quantize_config.json"
    if q is None and file.is_file():
        try:
            q = read_json(file)
        except (OSError, ValueError) as e:
            raise LlamalabError(f"{file}: cannot read JSON ({e})") from None
    if isinstance(q, dict) and q.get("quant_method", "gptq" if q.get("bits") else None) == "gptq":
        return q
    return None


def read_state(state: dict, qcfg: dict, *, lazy: bool, quantized: bool, where, types: dict) -> dict:
    """A GPTQ directory's raw tensors with each module's parts replaced by `<module>.weight`: GroupCodes
    (quantized), float32 (dequantized), or a meta tensor of the weight's shape (lazy: headers only).
    `types` gets how each is stored."""
    bits, fmt = read_config(qcfg, where)
    parts: dict[str, dict] = {}
    for key in [k for k in state if k.rsplit(".", 1)[-1] in PARTS]:
        prefix, suffix = key.rsplit(".", 1)
        parts.setdefault(prefix, {})[suffix] = state.pop(key)
    group = qcfg.get("group_size", -1)
    kind = f"gptq int{bits} ({'per row' if group in (-1, None) else f'group {group}'}" + \
        (", act-order)" if qcfg.get("desc_act") else ")")
    for prefix, t in parts.items():
        name, here = f"{prefix}.weight", f"{where}: {prefix}"
        if lazy:
            if any(p not in t for p in PARTS[:3]):
                raise LlamalabError(f"{here}: GPTQ weight lacks {', '.join(p for p in PARTS[:3] if p not in t)}")
            inp, out, groups = _shapes(t, bits, here)
            state[name], types[name] = torch.empty(out, inp, device="meta"), kind
            continue
        w = from_tensors(t, bits, fmt, here, group)
        codes = isinstance(w, GroupCodes)
        types[name] = kind if codes else f"gptq int{bits} (irregular g_idx: float)"
        state[name] = w.dequantize() if codes and not quantized else w
    return state
