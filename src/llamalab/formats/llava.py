"""llava-hf: transformers' `LlavaForConditionalGeneration` directory (`config.json` with `vision_config` and
`text_config`, safetensors).

Tensor names come in two spellings: the hub's (`vision_tower.vision_model.…`, `language_model.model.…`,
`language_model.lm_head.weight`, `multi_modal_projector.…`) and transformers 5's (`model.vision_tower.…`,
`model.language_model.…`, `lm_head.weight`; its `save_pretrained` writes the hub's back). Both are read (and the hub's written): the
vision tower and projector keep their names (ours are transformers'), the language model goes through the
LLaMA rules of `hf` (names, rotary layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict

from ..atomic import staged_dir, write_text
from ..bounded import read_json
from ..errors import LlamalabError
from ..images import Preprocess, read_preprocess
from ..tokenizer import save_tokenizer
from ..vision import ACTIVATIONS, Llava, LlavaArgs, VisionArgs
from . import hf
from .output import check_output

TOWERS = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
# transformers' config defaults: the hub's llava-hf configs leave out what equals them (llava-1.5's text_config
# names only vocab size, context and eps; its tower only what differs from CLIP ViT-B/32)
DEFAULTS = {
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6},
    "clip_vision_model": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "image_size": 224, "patch_size": 32},
    "siglip_vision_model": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                            "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
}


def vision_args(cfg: dict, where) -> VisionArgs:
    kind = TOWERS.get(cfg.get("model_type"))
    if kind is None:
        raise LlamalabError(f"{where}: vision tower {cfg.get('model_type')!r} is not supported "
                            f"(only {', '.join(TOWERS)})")
    cfg = {**DEFAULTS[cfg["model_type"]], **cfg}
    try:
        args = VisionArgs(kind=kind, dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
                          n_heads=cfg["num_attention_heads"], ffn_dim=cfg["intermediate_size"],
                          image_size=cfg["image_size"], patch_size=cfg["patch_size"],
                          channels=cfg.get("num_channels", 3),
                          norm_eps=cfg.get("layer_norm_eps", 1e-5 if kind == "clip" else 1e-6),
                          act=cfg.get("hidden_act", "quick_gelu" if kind == "clip" else "gelu_pytorch_tanh"))
    except KeyError as e:
        raise LlamalabError(f"{where}: vision_config lacks {e.args[0]!r}") from None
    if args.act not in ACTIVATIONS:
        raise LlamalabError(f"{where}: vision activation {args.act!r} is not supported")
    return args


def args_from_config(cfg: dict, where) -> LlavaArgs:
    if not isinstance(cfg, dict) or cfg.get("model_type") != "llava":
        raise LlamalabError(f"{where}: not a LLaVA config (model_type {cfg.get('model_type')!r}, want 'llava')")
    for key in ("vision_config", "text_config"):
        if not isinstance(cfg.get(key), dict):
            raise LlamalabError(f"{where}: config.json lacks the {key} object")
    layer = cfg.get("vision_feature_layer", -2)
    select = cfg.get("vision_feature_select_strategy", "default")
    if select not in ("default", "full"):
        raise LlamalabError(f"{where}: vision_feature_select_strategy {select!r} is not 'default' or 'full'")
    token = cfg.get("image_token_id", cfg.get("image_token_index", 32000))
    if not isinstance(token, int):
        raise LlamalabError(f"{where}: config.json names no image_token_id")
    text_cfg = {**DEFAULTS.get(cfg["text_config"].get("model_type", "llama"), {}), **cfg["text_config"]}
    text = hf.args_from_config(text_cfg, f"{where} (text_config)")
    act = cfg.get("projector_hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise LlamalabError(f"{where}: projector activation {act!r} is not supported")
    return LlavaArgs(vision=vision_args(cfg["vision_config"], f"{where} (vision_config)"), text=text,
                     image_token_id=token, feature_layer=tuple(layer) if isinstance(layer, list) else layer,
                     feature_select=select, projector_act=act,
                     projector_bias=bool(cfg.get("multimodal_projector_bias", True)))


def _part(key: str) -> tuple[str, str] | None:
    """(part, the rest): part is 'vision', 'projector' or 'text' (the rest in LlamaForCausalLM's names)."""
    key = key.removeprefix("model.")
    if key.startswith("vision_tower."):
        return "vision", key.removeprefix("vision_tower.").removeprefix("vision_model.")
    if key.startswith("multi_modal_projector."):
        return "projector", key.removeprefix("multi_modal_projector.")
    if key in ("lm_head.weight", "language_model.lm_head.weight"):
        return "text", "lm_head.weight"
    if key.startswith("language_model."):
        return "text", "model." + key.removeprefix("language_model.").removeprefix("model.")
    return None


def load_state(path, *, lazy: bool = False) -> tuple[dict[str, torch.Tensor], LlavaArgs, dict]:
    """Read a llava-hf directory into a `Llava` state dict (vision_tower.*, multi_modal_projector.*,
    language_model.* in our names and rotary layout); lazy: meta-device tensors (headers only)."""
    path = Path(path)
    cfg = hf._read_json(path / "config.json")
    args = args_from_config(cfg, path / "config.json")
    index = path / "model.safetensors.index.json"
    files = hf._index_files(index) if index.is_file() else sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise LlamalabError(f"{path}: no *.safetensors weights beside config.json")
    state = {}
    for name in files:
        hf._check_inside(path, name, index.name if index.is_file() else "the directory")
        for key, w in hf._read_safetensors(path / name, lazy).items():
            part = _part(key)
            if part is None:
                raise LlamalabError(f"{path}: unexpected tensor {key!r} (not a LLaVA parameter)")
            kind, rest = part
            if kind == "vision" and rest.startswith("head."):
                continue  # SigLIP's pooling head
            if kind == "text":
                ours = hf.to_ours(rest)
                if ours is None:
                    raise LlamalabError(f"{path}: unexpected tensor {key!r} (not a LLaMA parameter)")
                if ours.endswith(("attention.wq.weight", "attention.wk.weight")):
                    heads = args.text.n_heads if ".wq." in ours else args.text.kv_heads
                    w = hf.hf_to_meta_rotary(w, heads)
                state[f"language_model.{ours}"] = w
            else:
                state[f"{'vision_tower' if kind == 'vision' else 'multi_modal_projector'}.{rest}"] = w
    if args.text.tie_embeddings:
        state.pop("language_model.output.weight", None)
    return state, args, {"metadata": cfg}


def is_llava(path: Path) -> bool:
    """Whether `path` (a directory, or a file in one) holds a llava-hf checkpoint."""
    directory = path if path.is_dir() else path.parent
    try:
        return read_json(directory / "config.json").get("model_type") == "llava"
    except (OSError, ValueError, AttributeError):
        return False  # not ours to explain: the other readers say what is wrong with it


def preprocess_for(path, args: LlavaArgs) -> Preprocess:
    """The checkpoint's image processor settings (`preprocessor_config.json`), else the tower's defaults."""
    size = args.vision.image_size
    default = Preprocess.clip(size) if args.vision.kind == "clip" else Preprocess.siglip(size)
    return read_preprocess(path, default)


def describe(path) -> list[str]:
    """`llamalab info`'s lines for a llava-hf directory (headers only)."""
    state, args, _ = load_state(path, lazy=True)
    count = {part: sum(w.numel() for k, w in state.items() if k.startswith(part))
             for part in ("vision_tower", "multi_modal_projector", "language_model")}
    v, t = args.vision, args.text
    return ["format      llava-hf (LlavaForConditionalGeneration)", f"path        {path}",
            f"params      {sum(count.values()):,} (vision tower {count['vision_tower']:,}, projector "
            f"{count['multi_modal_projector']:,}, language model {count['language_model']:,})",
            f"vision      {v.kind}: dim={v.dim} n_layers={v.n_layers} n_heads={v.n_heads} ffn_dim={v.ffn_dim} "
            f"image_size={v.image_size} patch_size={v.patch_size} act={v.act}",
            f"images      feature_layer={args.feature_layer} select={args.feature_select} "
            f"image_tokens={args.image_tokens} image_token_id={args.image_token_id}",
            f"text        dim={t.dim} n_layers={t.n_layers} n_heads={t.n_heads} n_kv_heads={t.kv_heads} "
            f"ffn_dim={t.hidden_dim} vocab_size={t.vocab_size} max_seq_len={t.max_seq_len}"]


def load_model(path, dtype: torch.dtype = torch.float32) -> Llava:
    """A `Llava` with the checkpoint's weights, in eval mode."""
    state, args, _ = load_state(path)
    with torch.device("meta"):
        model = Llava(args)
    tied = {"language_model.output.weight"} if args.text.tie_embeddings else set()
    missing = set(model.state_dict()) - set(state) - tied
    extra = set(state) - set(model.state_dict())
    if missing or extra:
        what = f"lacks {sorted(missing)[:3]}" if missing else f"has unexpected {sorted(extra)[:3]}"
        raise LlamalabError(f"{path}: the weights do not fit config.json: it {what}")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # a tensor of another shape than config.json implies
        raise LlamalabError(f"{path}: the weights do not fit config.json "
                            f"({str(e).splitlines()[-1].strip()})") from None
    model.language_model.tie_weights()
    model.language_model.init_buffers()
    return model.to(dtype).eval()


# --------------------------------------------------------------------------------------------- write

def config_from_args(args: LlavaArgs, dtype: torch.dtype, tokenizer=None) -> dict:
    v = args.vision
    text = {k: w for k, w in hf.config_from_args(args.text, dtype, tokenizer).items() if k != "architectures"}
    vision = {"model_type": f"{v.kind}_vision_model", "hidden_size": v.dim, "num_hidden_layers": v.n_layers,
              "num_attention_heads": v.n_heads, "intermediate_size": v.ffn_dim, "image_size": v.image_size,
              "patch_size": v.patch_size, "num_channels": v.channels, "layer_norm_eps": v.norm_eps,
              "hidden_act": v.act, "attention_dropout": 0.0}
    if v.kind == "siglip":
        vision["vision_use_head"] = False
    layer = list(args.feature_layer) if isinstance(args.feature_layer, tuple) else args.feature_layer
    return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
            "text_config": text, "vision_config": vision, "image_token_id": args.image_token_id,
            "image_token_index": args.image_token_id, "image_seq_length": args.image_tokens,
            "vision_feature_layer": layer, "vision_feature_select_strategy": args.feature_select,
            "projector_hidden_act": args.projector_act, "multimodal_projector_bias": args.projector_bias,
            "tie_word_embeddings": args.text.tie_embeddings, "torch_dtype": str(dtype).removeprefix("torch.")}


def _hub_state(state: dict[str, torch.Tensor], args: LlavaArgs, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our names → the hub's (`vision_tower.vision_model.…`, `language_model.model.…`, …)."""
    text = {k.removeprefix("language_model."): w for k, w in state.items() if k.startswith("language_model.")}
    out = {f"language_model.{k}": w for k, w in hf._hf_state(text, args.text, dtype).items()}
    for key, w in state.items():
        if key.startswith("vision_tower."):
            out["vision_tower.vision_model." + key.removeprefix("vision_tower.")] = w.to(dtype).contiguous()
        elif key.startswith("multi_modal_projector."):
            out[key] = w.to(dtype).contiguous()
        elif not key.startswith("language_model."):
            raise LlamalabError(f"cannot write tensor {key!r} to llava-hf format: not a LLaVA parameter")
    return out


def save(state: dict[str, torch.Tensor], args: LlavaArgs, out, *, tokenizer_src=None, preprocess: dict | None = None,
         dtype: torch.dtype = torch.float32, max_shard_size: int | str = 5 * 10**9, force: bool = False) -> Path:
    """Write a directory `transformers.LlavaForConditionalGeneration.from_pretrained` loads, atomically.
    `preprocess`: a `preprocessor_config.json` to put beside it (the image processor's settings)."""
    check_output(out, "hf", force=force)
    tensors = _hub_state(state, args, dtype)
    with staged_dir(out) as tmp:
        save_torch_state_dict(tensors, tmp, max_shard_size=max_shard_size)
        tokenizer = save_tokenizer(tokenizer_src, tmp)
        write_text(tmp / "config.json", json.dumps(config_from_args(args, dtype, tokenizer), indent=2) + "\n")
        if preprocess is not None:
            write_text(tmp / "preprocessor_config.json", json.dumps(preprocess, indent=2) + "\n")
    return Path(out)
