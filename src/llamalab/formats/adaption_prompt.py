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

Training (`finetune --method llama-adapter`): `add_prompts` freezes the model and adapts its top K layers
with trainable prompts and gates, `prompt_init` draws them as peft does (prompt standard normal, gate zero),
`save` writes what training learned in this layout.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import staged_dir
from ..bounded import read_json
from ..config import ModelArgs
from ..errors import LlamalabError
from ..model import Attention, Transformer, apply_rotary

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model.model.layers."
PAPER_LENGTH = 10  # the paper's adaption prompt length L
PAPER_LAYERS = (30, 32)  # the paper adapts the top 30 of LLaMA-7B's 32 layers
_OURS = re.compile(r"layers\.(\d+)\.attention\.(adaption_(?:prompt|gate))")
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
        _adapt(model.layers[i].attention, prompt.to(device), gate.to(device), trainable=False)


def _adapt(attention: Attention, prompt: torch.Tensor, gate: torch.Tensor, *, trainable: bool) -> None:
    attention.__class__ = AdaptedAttention
    attention.adaption_prompt = nn.Parameter(prompt, requires_grad=trainable)
    attention.adaption_gate = nn.Parameter(gate, requires_grad=trainable)


def default_layers(n_layers: int) -> int:
    """The paper's share of adapted layers (30 of 32) on a model of `n_layers`: 30 of LLaMA-7B's 32, 28 of
    SmolLM2-135M's 30, all of a 2-layer model."""
    return max(1, min(n_layers, round(n_layers * PAPER_LAYERS[0] / PAPER_LAYERS[1])))


def add_prompts(model: Transformer, length: int, layers: int) -> list[int]:
    """Freeze every parameter of `model` and adapt its top `layers` layers with trainable prompts (1, length,
    dim) and gates (1,), as uninitialised tensors on the model's device (works on the meta device, before
    parallelisms are applied: `prompt_init` gives their values). Returns the adapted layer indices."""
    for p in model.parameters():
        p.requires_grad_(False)
    n, dim = len(model.layers), model.norm.weight.shape[0]
    device = model.norm.weight.device
    for i in range(n - layers, n):
        _adapt(model.layers[i].attention, torch.empty(1, length, dim, device=device), torch.empty(1, device=device),
               trainable=True)
    return list(range(n - layers, n))


def prompt_init(base_tensor, generator: torch.Generator):
    """`full_tensor` (see train.parallel.materialize) for a model with `add_prompts`: each prompt drawn standard
    normal (peft's and the official code's init), each gate zero (the paper's zero-init attention: training
    starts from the base model's own answers), every base parameter from `base_tensor`."""
    def full_tensor(name: str, shape, dtype) -> torch.Tensor:
        if name.endswith(".adaption_prompt"):
            return torch.randn(shape, dtype=dtype, generator=generator)
        if name.endswith(".adaption_gate"):
            return torch.zeros(shape, dtype=dtype)
        return base_tensor(name, shape, dtype)
    return full_tensor


def save(out, state: dict[str, torch.Tensor], length: int, layers: int, base: str | None = None) -> Path:
    """Write the prompts and gates of a trained model (our names: `layers.N.attention.adaption_prompt`, ...) as
    the peft directory `out`, whole or not at all (it replaces an earlier one: a resumed run writes it again)."""
    from safetensors.torch import save_file

    out = Path(out)
    tensors = {}
    for key, w in sorted(state.items()):
        m = _OURS.fullmatch(key)
        if m is None:
            raise ValueError(f"not an adaption prompt parameter: {key}")
        tensors[f"{PREFIX}{m.group(1)}.self_attn.{m.group(2)}"] = w.float().contiguous()
    config = {"peft_type": "ADAPTION_PROMPT", "task_type": "CAUSAL_LM", "adapter_len": length,
              "adapter_layers": layers, "target_modules": "self_attn", "inference_mode": True,
              "base_model_name_or_path": base, "revision": None, "auto_mapping": None}
    with staged_dir(out) as tmp:
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out
