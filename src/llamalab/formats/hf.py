"""Hugging Face transformers: `config.json` + `model.safetensors` (or shards + `model.safetensors.index.json`).

Two differences from our (Meta's) layout: the names, and the rotary layout of wq/wk. HF's `rotate_half`
rotates the two *halves* of each head, Meta's code rotates *adjacent pairs*; the conversion permutes the
rows of wq/wk within each head so both compute the same attention (transformers'
`convert_llama_weights_to_hf.permute` and its inverse).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..atomic import staged_dir, write_text
from ..config import ModelArgs
from ..bounded import read_json
from ..errors import LlamalabError
from ..quant import gptq_layout
from ..quant.codes import SUFFIXES, GroupCodes, from_tensors, permute_rows, to_tensors
from ..tokenizer import save_tokenizer
from .names import name_maps
from .output import check_output

to_ours, to_hf = name_maps("hf")


def meta_to_hf_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head from adjacent pairs (x0 y0 x1 y1 ...) to halves (x0 x1 ... y0 y1 ...)."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def hf_to_meta_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `meta_to_hf_rotary`."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


# -------------------------------------------------------------------------------------------- config

def args_from_config(cfg: dict, where) -> ModelArgs:
    if not isinstance(cfg, dict):
        raise LlamalabError(f"{where}: config.json holds a {type(cfg).__name__}, not an object of settings")
    if cfg.get("model_type", "llama") not in ("llama", "mistral") or \
            any("Llama" not in a and "Mistral" not in a for a in cfg.get("architectures", [])):
        raise LlamalabError(f"{where}: model_type {cfg.get('model_type')!r} / architectures "
                            f"{cfg.get('architectures')} is not a LLaMA model")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise LlamalabError(f"{where}: {flag}=true is not LLaMA (no biases); unsupported")
    if cfg.get("sliding_window"):
        raise LlamalabError(f"{where}: sliding-window attention is not supported")
    try:
        dim, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
        rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
        theta = cfg.get("rope_theta", (rope or {}).get("rope_theta", 10000.0))
        if rope is not None:
            rope = {k: v for k, v in rope.items() if k != "rope_theta"}
            kind = rope.get("rope_type", rope.get("type"))
            if kind in (None, "default"):
                rope = None
            elif kind not in ("llama3", "linear"):
                raise LlamalabError(f"{where}: rope scaling type {kind!r} is not supported (only 'linear' and 'llama3')")
        args = ModelArgs(
            dim=dim, n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            vocab_size=cfg["vocab_size"], ffn_dim=cfg["intermediate_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=rope,
            max_seq_len=cfg.get("max_position_embeddings", 2048),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise LlamalabError(f"{where}: config.json lacks {e.args[0]!r}") from None
    except (AttributeError, TypeError, ValueError, LlamalabError) as e:
        raise LlamalabError(f"{where}: invalid value in config.json ({e})") from None
    if cfg.get("head_dim") not in (None, args.head_dim):
        raise LlamalabError(f"{where}: head_dim {cfg['head_dim']} != hidden_size/num_attention_heads; unsupported")
    return args


def config_from_args(args: ModelArgs, dtype: torch.dtype, tokenizer=None) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": args.dim, "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads, "head_dim": args.head_dim, "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta, "rope_scaling": args.rope_scaling,
        "max_position_embeddings": args.max_seq_len, "tie_word_embeddings": args.tie_embeddings,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "initializer_range": 0.02, "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if tokenizer is not None:
        cfg.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    return cfg


# ---------------------------------------------------------------------------------------------- read

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I8": torch.int8, "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64}


def _read_safetensors(file: Path, lazy: bool = False) -> dict[str, torch.Tensor]:
    try:
        if not lazy:
            return load_file(file)
        with safe_open(file, "pt") as f:  # header only: meta-device tensors of the right shape and dtype
            slices = {k: f.get_slice(k) for k in f.keys()}
            return {k: torch.empty(s.get_shape(), dtype=_DTYPES.get(s.get_dtype(), torch.float32), device="meta")
                    for k, s in slices.items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise LlamalabError(f"{file}: not a readable safetensors file ({e}); is it truncated?") from None


def _read_json(file: Path) -> dict:
    try:
        return read_json(file)
    except (OSError, ValueError) as e:
        raise LlamalabError(f"{file}: cannot read JSON ({e})") from None


def _group_codes(state: dict, lazy: bool, quantized: bool, where, types: dict) -> dict:
    """Our quantized layout's `<module>.qweight/.scales/.zeros` → `<module>.weight` as GroupCodes (quantized),
    else dequantized to float32; lazy: a meta tensor of the weight's shape. `types` gets how each is stored
    (e.g. "int4 (group 32)": 4-bit codes with a scale and a minimum per group of 32 weights)."""
    parts: dict[str, dict] = {}
    for key in [k for k in state if k.rsplit(".", 1)[-1] in SUFFIXES]:
        prefix, suffix = key.rsplit(".", 1)
        parts.setdefault(prefix, {})[suffix] = state.pop(key)
    for prefix, t in parts.items():
        codes = from_tensors(t, f"{where}: {prefix}")  # shapes only: meta tensors when lazy
        types[f"{prefix}.weight"] = f"int{codes.bits} (group {codes.group_size})"
        if lazy:
            state[f"{prefix}.weight"] = torch.empty(codes.shape, device="meta")
        else:
            state[f"{prefix}.weight"] = codes if quantized else codes.dequantize()
    return state


def _rows(w, fn):
    return permute_rows(w, fn) if isinstance(w, GroupCodes) else fn(w)


def _index_files(index: Path) -> list[str]:
    data = _read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise LlamalabError(f"{index}: no weight_map of tensor names to shard files; the index is damaged "
                            "(download it again, or remove it to load every *.safetensors file)")
    return sorted(set(weight_map.values()))


def _check_inside(directory: Path, name: str, source: str) -> None:
    """A shard is a file of the checkpoint directory: a name that climbs out (`..`, an absolute path) or a
    link to a file elsewhere is refused. A hub download's files link into the repository's cache
    (snapshots/REV/x -> ../../blobs/HASH): that cache counts as the checkpoint's."""
    home = directory.resolve()
    if home.parent.name == "snapshots":
        home = home.parent.parent
    file = directory / name
    if Path(name).is_absolute() or ".." in Path(name).parts or home not in file.resolve().parents:
        raise LlamalabError(f"{directory}: shard {name!r} named in {source} lies outside the checkpoint; refused")
    if not file.is_file():
        raise LlamalabError(f"{directory}: shard {name} named in {source} is missing")


def load_state(path, *, lazy: bool = False, quantized: bool = False) -> tuple[dict[str, torch.Tensor], ModelArgs, dict]:
    """Read an HF directory into our names and rotary layout. lazy: meta-device tensors (headers only).
    A directory `llamalab quantize` wrote holds group codes, a GPTQ checkpoint (`quant/gptq_layout.py`) its
    packed codes: kept as `GroupCodes` with `quantized`, else dequantized to float32."""
    path = Path(path)
    cfg = _read_json(path / "config.json")
    args = args_from_config(cfg, path / "config.json")
    index = path / "model.safetensors.index.json"
    files = _index_files(index) if index.is_file() else sorted(p.name for p in path.glob("*.safetensors"))
    raw = {}
    for name in files:
        _check_inside(path, name, index.name if index.is_file() else "the directory")
        raw.update(_read_safetensors(path / name, lazy))
    state, stored = {}, {}
    gptq = gptq_layout.config_of(cfg, path)  # a GPTQ checkpoint (AutoGPTQ / GPTQModel): its codes kept
    if gptq is not None:
        raw = gptq_layout.read_state(raw, gptq, lazy=lazy, quantized=quantized, where=path, types=stored)
    for key, w in _group_codes(raw, lazy, quantized, path, stored).items():  # a module's parts: maybe two shards
        ours = to_ours(key)
        if ours is None:
            if key.endswith("rotary_emb.inv_freq"):
                continue  # a buffer some old exports saved; recomputed from the config
            raise LlamalabError(f"{path}: unexpected tensor {key!r} (not a LLaMA parameter)")
        state[ours] = w
    for name, w in state.items():  # the tensors present, not the layers the config claims
        kind = name.split(".")[-2] if name.startswith("layers.") else None
        if kind in ("wq", "wk"):
            heads = args.n_heads if kind == "wq" else args.kv_heads
            if tuple(w.shape) != (heads * args.head_dim, args.dim):
                raise LlamalabError(f"{path}: tensor {name} has shape {tuple(w.shape)} but config.json "
                                    f"implies ({heads * args.head_dim}, {args.dim}); config and weights disagree")
            state[name] = _rows(w, lambda m, heads=heads: hf_to_meta_rotary(m, heads))
    if args.tie_embeddings and "output.weight" in state:
        if lazy or isinstance(state["output.weight"], GroupCodes) or \
                torch.equal(state["output.weight"], state.get("tok_embeddings.weight", torch.empty(0))):
            del state["output.weight"]
        else:
            raise LlamalabError(f"{path}: tie_word_embeddings is true but lm_head.weight differs from embed_tokens")
    types = {to_ours(k): t for k, t in stored.items() if to_ours(k) in state}  # (not a tied output's)
    extra = {"metadata": cfg, **({"tensor_types": types} if types else {})}
    if gptq is not None:
        extra["quantization"] = gptq_layout.describe(gptq)
    return state, args, extra


# --------------------------------------------------------------------------------------------- write

def _hf_state(state: dict[str, torch.Tensor], args: ModelArgs, dtype: torch.dtype,
              pack=to_tensors) -> dict[str, torch.Tensor]:
    out = {}
    for key, w in state.items():
        if key == "output.weight" and args.tie_embeddings:
            continue
        name = to_hf(key)
        if name is None:
            raise LlamalabError(f"cannot write tensor {key!r} to HF format: not a LLaMA parameter")
        if key.endswith("attention.wq.weight"):
            w = _rows(w, lambda m: meta_to_hf_rotary(m, args.n_heads))
        elif key.endswith("attention.wk.weight"):
            w = _rows(w, lambda m: meta_to_hf_rotary(m, args.kv_heads))
        if isinstance(w, GroupCodes):  # `<module>.weight` → `<module>.qweight/.scales/.zeros`
            out.update((f"{name.removesuffix('.weight')}.{k}", t) for k, t in pack(w).items())
        else:
            out[name] = w.to(dtype).contiguous()
    return out


def save(state: dict[str, torch.Tensor], args: ModelArgs, out, *, tokenizer_src=None,
         dtype: torch.dtype = torch.float32, max_shard_size: int | str = 5 * 10**9, force: bool = False,
         quantization_config: dict | None = None) -> Path:
    """Write a directory `transformers.AutoModelForCausalLM.from_pretrained` loads, atomically (the
    directory appears complete or not at all; `force` replaces an existing one, see `output`).

    Shards into model-0000K-of-0000N.safetensors + model.safetensors.index.json when larger than
    `max_shard_size` (bytes, or "5GB"), as huggingface_hub's `save_torch_state_dict` lays them out.
    tokenizer_src: a Tokenizer, or a path (GGUF / tokenizer dir) to load one from; its files go along.
    `GroupCodes` values are written in our quantized layout, described by `quantization_config`, or in
    the GPTQ layout when its `quant_method` is "gptq" (with AutoGPTQ's quantize_config.json beside).
    """
    check_output(out, "hf", force=force)
    gptq = (quantization_config or {}).get("quant_method") == "gptq"
    pack = (lambda c: gptq_layout.to_tensors(c, quantization_config["group_size"])) if gptq else to_tensors
    tensors = _hf_state(state, args, dtype, pack)
    with staged_dir(out) as tmp:
        save_torch_state_dict(tensors, tmp, max_shard_size=max_shard_size)
        tokenizer = save_tokenizer(tokenizer_src, tmp)
        if tokenizer is not None and not (tmp / "generation_config.json").exists():
            gen = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
            if tokenizer.pad_id is not None:
                gen["pad_token_id"] = tokenizer.pad_id
            write_text(tmp / "generation_config.json", json.dumps(gen, indent=2) + "\n")
        cfg = config_from_args(args, dtype, tokenizer)
        if quantization_config:
            cfg["quantization_config"] = quantization_config
        if gptq:
            write_text(tmp / "quantize_config.json", json.dumps(quantization_config, indent=2) + "\n")
        write_text(tmp / "config.json", json.dumps(cfg, indent=2) + "\n")
    return Path(out)
