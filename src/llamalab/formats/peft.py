"""LoRA adapters on disk, in peft's layout, so one adapter moves between llamalab, peft and transformers:

    adapter_config.json          peft's LoraConfig (peft_type LORA, r, lora_alpha, target_modules, ...)
    adapter_model.safetensors    base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight  (r × in)
                                 base_model.model.model.layers.N.self_attn.q_proj.lora_B.weight  (out × r)

Names are HF's module names and q/k rows are in HF's rotary layout (B's rows are permuted like the
weights they add to, formats/hf.py); scale = lora_alpha / r (/ √r with use_rslora), per module with
rank_pattern / alpha_pattern. Adapter features that change the math (DoRA, biases, modules_to_save, ...)
are refused by name rather than ignored.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ..atomic import staged_dir
from ..bounded import read_json
from ..config import ModelArgs
from ..errors import LlamalabError
from .hf import hf_to_meta_rotary, meta_to_hf_rotary, to_hf, to_ours
from .lora import ALL, HF_NAMES, Adapter, LoraSpec, attach
from .shapes import expected_shapes

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."
# peft options that change what the adapter computes, and the value that means "not used"
UNSUPPORTED = {"use_dora": False, "bias": "none", "lora_bias": False, "modules_to_save": None,
               "fan_in_fan_out": False, "layer_replication": None, "trainable_token_indices": None,
               "target_parameters": None, "use_qalora": False, "alora_invocation_tokens": None}


def _rotary_heads(path: str, args: ModelArgs) -> int | None:
    return args.n_heads if path.endswith("wq") else args.kv_heads if path.endswith("wk") else None


def save_adapter(out, lora_state: dict[str, torch.Tensor], spec: LoraSpec, args: ModelArgs,
                 base: str | None = None) -> Path:
    """Write the LoRA parameters of a trained model (our names: `layers.N.attention.wq.lora_a.weight`, ...) as
    the directory `out`, whole or not at all (it replaces an earlier one: a resumed run writes it again)."""
    from safetensors.torch import save_file

    out = Path(out)
    tensors = {}
    for key, w in sorted(lora_state.items()):
        path, kind = key.rsplit(".", 2)[0], {"lora_a": "lora_A", "lora_b": "lora_B"}[key.rsplit(".", 2)[1]]
        heads = _rotary_heads(path, args)
        if kind == "lora_B" and heads is not None:
            w = meta_to_hf_rotary(w, heads)
        module = to_hf(f"{path}.weight").removesuffix(".weight")
        tensors[f"{PREFIX}{module}.{kind}.weight"] = w.float().contiguous()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank, "lora_alpha": spec.alpha,
              "lora_dropout": spec.dropout, "target_modules": [HF_NAMES[t] for t in spec.targets],
              "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
              "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
              "rank_pattern": {}, "alpha_pattern": {}, "base_model_name_or_path": base}
    with staged_dir(out) as tmp:
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


_LITERAL = re.compile(r"[\w\-]+(?:\.[\w\-]+)*")


def _pattern_value(patterns: dict, module: str, default, where):
    """peft's rank_pattern / alpha_pattern: the first key naming the module or the end of its dotted name.
    Keys are matched as literal module names (an escaped dot `\\.` reads as a dot), in linear time: a key
    that is a regular expression is refused, never run (a crafted one could backtrack for hours)."""
    for key, value in (patterns or {}).items():
        name = key.replace("\\.", ".") if isinstance(key, str) else None
        if name is None or not _LITERAL.fullmatch(name):
            raise LlamalabError(f"{where}: pattern key {str(key)[:60]!r} is not a module name; llamalab matches "
                                f"rank_pattern / alpha_pattern keys literally (e.g. 'layers.0.self_attn.q_proj' or "
                                f"'q_proj'): list the modules by name")
        if module == name or module.endswith("." + name):
            return value
    return default


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def read_config(adapter_dir) -> dict:
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / CONFIG).is_file() or not (adapter_dir / WEIGHTS).is_file():
        raise LlamalabError(f"{adapter_dir}: not a LoRA adapter directory (want {CONFIG} and {WEIGHTS}, as "
                            f"`llamalab finetune --lora-rank R` and peft's save_pretrained write them)")
    try:
        config = read_json(adapter_dir / CONFIG)
    except (OSError, ValueError) as e:
        raise LlamalabError(f"{adapter_dir / CONFIG}: cannot read JSON ({e})") from None
    kind = config.get("peft_type", "LORA") if isinstance(config, dict) else None
    if kind == "ADAPTION_PROMPT":
        raise LlamalabError(f"{adapter_dir} is a LLaMA-Adapter (peft's adaption_prompt): gated attention over "
                            f"learned prompts, no weight deltas to merge; run it unmerged with --adapter")
    if kind != "LORA":
        raise LlamalabError(f"{adapter_dir / CONFIG}: peft_type {kind!r} is not LORA")
    for key, off in UNSUPPORTED.items():
        value = config.get(key, off)
        if value != off and value:  # None, False, [] and {} all mean "not used"
            raise LlamalabError(f"{adapter_dir / CONFIG}: {key}={config.get(key)!r} is not supported (plain LoRA "
                                f"on linear layers only)")
    for key in ("r", "lora_alpha"):
        if not _positive(config.get(key)):
            raise LlamalabError(f"{adapter_dir / CONFIG}: {key} must be a positive finite number, got "
                                f"{config.get(key)!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict) or not all(map(_positive, (config.get(key) or {}).values())):
            raise LlamalabError(f"{adapter_dir / CONFIG}: {key} must map module names to positive finite numbers")
    return config


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise LlamalabError(f"{file}: not a readable safetensors file ({e})") from None


_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\.lora_(?P<kind>[AB])(?:\.[\w-]+)?\.weight$")


def load_adapter(adapter_dir, args: ModelArgs) -> Adapter:
    """An adapter directory (ours or peft's) as an Adapter for a base with `args`: every tensor is checked
    against the base's layer shapes, so an adapter for another model is refused, not silently misapplied."""
    adapter_dir = Path(adapter_dir)
    config = read_config(adapter_dir)
    tensors = _read_tensors(adapter_dir / WEIGHTS)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, w in tensors.items():
        m = _KEY.match(key)
        ours = to_ours(m.group("module") + ".weight") if m else None
        if ours is None or ours.rsplit(".", 2)[-2] not in ALL:
            raise LlamalabError(f"{adapter_dir / WEIGHTS}: tensor {key!r} is not a LoRA matrix of a LLaMA linear "
                                f"layer (q/k/v/o_proj, gate/up/down_proj)")
        parts.setdefault(ours.removesuffix(".weight"), {})[m.group("kind")] = w
    shapes = expected_shapes(args)
    layers = {}
    for path, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise LlamalabError(f"{adapter_dir / WEIGHTS}: {path} has lora_{''.join(ab)} but not both A and B")
        a, b = ab["A"], ab["B"]
        want = shapes.get(f"{path}.weight")
        if want is None or a.ndim != 2 or b.ndim != 2 or a.shape[1] != want[1] or b.shape[0] != want[0] \
                or a.shape[0] != b.shape[1]:
            raise LlamalabError(
                f"{adapter_dir}: the adapter's {path} has A {tuple(a.shape)} and B {tuple(b.shape)} but the base's "
                f"layer is {want or 'absent'} (out × in); this adapter was trained on a model of another shape")
        hf_module = to_hf(f"{path}.weight").removesuffix(".weight")
        r = _pattern_value(config.get("rank_pattern"), hf_module, config["r"], adapter_dir / CONFIG)
        alpha = _pattern_value(config.get("alpha_pattern"), hf_module, config["lora_alpha"], adapter_dir / CONFIG)
        if r != a.shape[0]:
            raise LlamalabError(f"{adapter_dir}: {path} has rank {a.shape[0]} but the config says r={r}; the "
                                f"config and the weights do not belong together")
        scale = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
        _check_update(adapter_dir, path, a, b, r * scale)
        heads = _rotary_heads(path, args)
        if heads is not None:
            b = hf_to_meta_rotary(b, heads)
        layers[path] = (a.float(), b.float(), float(scale))
    if not layers:
        raise LlamalabError(f"{adapter_dir / WEIGHTS}: holds no LoRA matrices")
    return Adapter(layers, config)


def attach_adapter(checkpoint, adapter_dir) -> None:
    """Give a loaded `llamalab.load` checkpoint the adapter in `adapter_dir` (checked against its shapes)."""
    attach(checkpoint.model, load_adapter(adapter_dir, checkpoint.args))


def _check_update(adapter_dir, path: str, a: torch.Tensor, b: torch.Tensor, bound: float) -> None:
    """Finite A and B, and an update scale·BA whose entries fit float32 (|ΔW| <= r·scale·max|A|·max|B|)."""
    for name, w in (("A", a), ("B", b)):
        if not torch.isfinite(w).all():
            raise LlamalabError(f"{adapter_dir / WEIGHTS}: {path}'s lora_{name} holds NaN or infinite values; the "
                                f"adapter is damaged (its training diverged?)")
    largest = bound * float(a.abs().max()) * float(b.abs().max()) if a.numel() and b.numel() else 0.0
    if not largest < torch.finfo(torch.float32).max:
        raise LlamalabError(f"{adapter_dir}: {path}'s update (lora_alpha / r = {bound / a.shape[0]:g}) would overflow "
                            f"float32; check lora_alpha and r in {CONFIG}")
