"""LLaMA-Adapter (Zhang et al. 2023) in peft's `adaption_prompt` layout: `adapter_config.json` (peft_type
ADAPTION_PROMPT, adapter_len L, adapter_layers K, target_modules "self_attn") and `adapter_model.safetensors`
with, for each of the top K layers, `base_model.model.model.layers.N.self_attn.adaption_prompt` (1, L, dim) and
`...adaption_gate` (1,).

The paper's zero-init gated attention: in each adapted layer, the queries (rotated, as in the layer's own
attention) also attend to L learned prompt vectors, projected by the layer's own key and value weights (no
rotation: the prompt has no position); that attention is softmaxed on its own, scaled by the gate (zero at the
start of training, so the adapter starts as a no-op), projected by the layer's output weights and added to the
layer's attention output. This is peft's `AdaptedAttention`, on our `model.Attention` (whose Meta q/k layout
leaves every q·k product as it is), so the same adapter gives the same logits.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..bounded import read_json
from ..config import ModelArgs
from ..errors import LlamalabError
from ..model import Attention, Transformer, apply_rotary

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.self_attn\.adaption_(prompt|gate)$")


class AdaptedAttention(Attention):
    """`Attention` plus the gated attention over the adaption prompt (`adaption_prompt`, `adaption_gate`)."""

    adaption_prompt: nn.Parameter  # (1, L, dim)
    adaption_gate: nn.Parameter    # (1,)

    def forward(self, x, rotation, kv=None, pos: int = 0, mask=None):
        out = super().forward(x, rotation, kv, pos, mask)
        B, T, _ = x.shape
        q = apply_rotary(self.wq(x).view(B, T, -1, self.head_dim), rotation).transpose(1, 2)  # (B, H, T, hd)
        prompt = self.adaption_prompt.to(x.dtype)
        L = prompt.shape[1]
        k = self.wk(prompt).view(1, L, -1, self.head_dim).transpose(1, 2)  # (1, KV, L, hd)
        v = self.wv(prompt).view(1, L, -1, self.head_dim).transpose(1, 2)
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = self.adaption_gate.to(q.dtype) * F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return out + self.wo((scores @ v).transpose(1, 2).reshape(B, T, -1))


def is_adaption_prompt(adapter_dir) -> bool:
    """Whether `adapter_dir` holds a peft adapter of type ADAPTION_PROMPT."""
    try:
        return read_json(Path(adapter_dir) / CONFIG).get("peft_type") == "ADAPTION_PROMPT"
    except (OSError, ValueError, AttributeError):
        return False  # not ours to explain: the LoRA reader says what is wrong with it


def load(adapter_dir, args: ModelArgs) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (prompt (1, L, dim), gate (1,))}, checked against the config and a base with `args`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = read_json(adapter_dir / CONFIG)
    length, count = config.get("adapter_len"), config.get("adapter_layers")
    for key, value in (("adapter_len", length), ("adapter_layers", count)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LlamalabError(f"{adapter_dir / CONFIG}: {key} must be a positive integer, got {value!r}")
    if config.get("target_modules", "self_attn") != "self_attn":
        raise LlamalabError(f"{adapter_dir / CONFIG}: target_modules {config.get('target_modules')!r} is not "
                            "supported (LLaMA's self_attn only)")
    if count > args.n_layers:
        raise LlamalabError(f"{adapter_dir}: adapts {count} layers but the base has {args.n_layers}")
    try:
        tensors = load_file(adapter_dir / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as e:
        raise LlamalabError(f"{adapter_dir / WEIGHTS}: not a readable safetensors file ({e})") from None
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, w in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise LlamalabError(f"{adapter_dir / WEIGHTS}: tensor {key!r} is not an adaption prompt or gate")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = w.float()
    top = set(range(args.n_layers - count, args.n_layers))
    if set(layers) != top:
        raise LlamalabError(f"{adapter_dir}: adapts layers {sorted(layers)} but adapter_layers={count} of a "
                            f"{args.n_layers}-layer base means {sorted(top)}; an adapter for another model?")
    out = {}
    for i, parts in sorted(layers.items()):
        prompt, gate = parts.get("prompt"), parts.get("gate")
        if prompt is None or gate is None or tuple(prompt.shape) != (1, length, args.dim) or gate.numel() != 1:
            shape = tuple(prompt.shape) if prompt is not None else None
            raise LlamalabError(f"{adapter_dir}: layer {i}'s adaption prompt {shape} and gate do not fit "
                                f"adapter_len={length} on a base of width {args.dim}")
        if not (torch.isfinite(prompt).all() and torch.isfinite(gate).all()):
            raise LlamalabError(f"{adapter_dir / WEIGHTS}: layer {i}'s adaption prompt or gate holds NaN or "
                                "infinite values")
        out[i] = (prompt, gate.reshape(1))
    return out


def attach(model: Transformer, adapter: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Turn the adapted layers' attention into `AdaptedAttention` with the adapter's prompt and gate."""
    device = model.norm.weight.device
    for i, (prompt, gate) in adapter.items():
        attention = model.layers[i].attention
        attention.__class__ = AdaptedAttention
        attention.adaption_prompt = nn.Parameter(prompt.to(device), requires_grad=False)
        attention.adaption_gate = nn.Parameter(gate.to(device), requires_grad=False)
