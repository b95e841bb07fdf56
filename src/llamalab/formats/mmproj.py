"""llama.cpp's LLaVA projector file (`mmproj-*.gguf`, architecture "clip"): the CLIP vision tower and the
LLaVA-1.5 MLP projector that go with a text GGUF (the pair `llama-mtmd-cli -m LLM.gguf --mmproj mmproj.gguf`).

Its layout, as llama.cpp's `convert_image_encoder_to_gguf.py` writes it and `tools/mtmd/clip.cpp` reads it:

- metadata `clip.has_vision_encoder`, `clip.projector_type` ("mlp": LLaVA-1.5's), `clip.use_gelu` (else
  quick-GELU), and `clip.vision.*`: image_size, patch_size, embedding_length, feed_forward_length,
  attention.head_count, attention.layer_norm_epsilon, block_count (the blocks kept: the converter drops those
  after the deepest feature layer), feature_layer (indices into the hidden states, 0 = the blocks' input,
  non-negative), image_mean, image_std;
- tensors `v.class_embd`, `v.patch_embd.weight`, `v.position_embd.weight`, `v.pre_ln.*`, per block
  `v.blk.N.{ln1,ln2,attn_q,attn_k,attn_v,attn_out,ffn_up,ffn_down}.*`, and the projector `mm.0.*`, `mm.2.*`.
  The legacy converter names a block's fc1 `ffn_down` and fc2 `ffn_up`; clip.cpp tells them apart by shape, and
  so do we (fc1 is the one that reads the tower's width).

Without `clip.vision.feature_layer` the last kept block's output is the feature (the converter dropped the
final block: LLaVA's -2); the class token is dropped (LLaVA's "default" strategy), as clip.cpp does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ModelArgs
from ..errors import LlamalabError
from ..images import Preprocess
from ..model import Transformer
from ..tokenizer import open_gguf
from ..vision import Llava, LlavaArgs, VisionArgs
from .gguf import _to_torch, read_metadata

BLOCK = {"ln1": "layer_norm1", "ln2": "layer_norm2", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
         "attn_v": "self_attn.v_proj", "attn_out": "self_attn.out_proj"}
TOP = {"v.class_embd": "embeddings.class_embedding", "v.patch_embd.weight": "embeddings.patch_embedding.weight",
       "v.position_embd.weight": "embeddings.position_embedding.weight", "v.pre_ln.weight": "pre_layrnorm.weight",
       "v.pre_ln.bias": "pre_layrnorm.bias"}


def _vision_args(meta: dict, path) -> VisionArgs:
    def need(key):
        if f"clip.vision.{key}" not in meta:
            raise LlamalabError(f"{path}: mmproj metadata lacks 'clip.vision.{key}'")
        return meta[f"clip.vision.{key}"]

    return VisionArgs(kind="clip", dim=int(need("embedding_length")), n_layers=int(need("block_count")),
                      n_heads=int(need("attention.head_count")), ffn_dim=int(need("feed_forward_length")),
                      image_size=int(need("image_size")), patch_size=int(need("patch_size")),
                      norm_eps=float(need("attention.layer_norm_epsilon")),
                      act="gelu" if meta.get("clip.use_gelu") else "quick_gelu")


def _check(meta: dict, path) -> None:
    if meta.get("general.architecture") != "clip":
        raise LlamalabError(f"{path}: not an mmproj file (GGUF architecture {meta.get('general.architecture')!r}, "
                            "want 'clip')")
    if not meta.get("clip.has_vision_encoder", False):
        raise LlamalabError(f"{path}: the mmproj file has no vision encoder")
    kind = meta.get("clip.projector_type", meta.get("clip.vision.projector_type", "mlp"))
    if kind != "mlp":
        raise LlamalabError(f"{path}: projector type {kind!r} is not supported (only LLaVA-1.5's 'mlp')")


def _name(gguf_name: str) -> str | None:
    """Our name (`vision_tower.…`, `multi_modal_projector.…`) for an mmproj tensor (a block's MLP still as
    `ffn_up` / `ffn_down`: see `_mlp`); None: not one we run."""
    if gguf_name in TOP:
        return "vision_tower." + TOP[gguf_name]
    parts = gguf_name.split(".")
    if parts[0] == "mm" and len(parts) == 3 and parts[1] in ("0", "2"):
        return f"multi_modal_projector.linear_{1 if parts[1] == '0' else 2}.{parts[2]}"
    if parts[:2] == ["v", "blk"] and len(parts) == 5 and parts[2].isdigit():
        kind = BLOCK.get(parts[3], parts[3] if parts[3] in ("ffn_up", "ffn_down") else None)
        return kind and f"vision_tower.encoder.layers.{parts[2]}.{kind}.{parts[4]}"
    return None


def _mlp(state: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """Each block's `ffn_up` / `ffn_down` as fc1 / fc2. As clip.cpp decides it: when `ffn_down.weight` reads the
    tower's width it is fc1 (the legacy converter's swapped names), else the names mean what they say."""
    out = {k: w for k, w in state.items() if ".ffn_" not in k}
    for key, w in state.items():
        if ".ffn_" not in key:
            continue
        prefix, kind, leaf = key.rsplit(".", 2)
        down = state.get(f"{prefix}.ffn_down.weight")
        swapped = down is not None and down.shape[-1] == dim
        fc1 = (kind == "ffn_down") if swapped else (kind == "ffn_up")
        out[f"{prefix}.mlp.{'fc1' if fc1 else 'fc2'}.{leaf}"] = w
    return out


def load(path) -> tuple[dict[str, torch.Tensor], VisionArgs, int | tuple[int, ...], Preprocess]:
    """(the tower's and projector's tensors in `vision.Llava`'s names, the tower's args, the feature layer(s)
    as hidden-state indices, the image preprocessing) of an mmproj file."""
    path = Path(path)
    reader = open_gguf(path)
    meta = read_metadata(path, reader)
    _check(meta, path)
    args = _vision_args(meta, path)
    state, unknown = {}, []
    for t in reader.tensors:
        try:
            w = _to_torch(t).float()
        except (ValueError, IndexError) as e:
            raise LlamalabError(f"{path}: tensor {t.name} is damaged ({e}); is the file truncated?") from None
        name = _name(t.name)
        if name is None:
            unknown.append(t.name)
        else:
            state[name] = w.reshape(args.dim) if t.name == "v.class_embd" else w
    state = _mlp(state, args.dim)
    if unknown:
        raise LlamalabError(f"{path}: mmproj tensors {unknown[:4]} are not LLaVA-1.5's (a CLIP tower and an MLP "
                            "projector); this projector is not supported")
    layers = [int(i) for i in meta.get("clip.vision.feature_layer", [])] or [args.n_layers]
    if any(not 0 <= i <= args.n_layers for i in layers):
        raise LlamalabError(f"{path}: clip.vision.feature_layer {layers} lies outside the {args.n_layers} blocks")
    mean = tuple(float(x) for x in meta.get("clip.vision.image_mean", Preprocess().mean))
    std = tuple(float(x) for x in meta.get("clip.vision.image_std", Preprocess().std))
    preprocess = Preprocess(shortest_edge=args.image_size, crop=(args.image_size, args.image_size), mean=mean, std=std)
    return state, args, layers[0] if len(layers) == 1 else tuple(layers), preprocess


def attach(language_model: Transformer, text: ModelArgs, path, device="cpu") -> tuple[Llava, Preprocess]:
    """A `Llava` of the mmproj file's tower and projector around an already loaded language model, and its
    image preprocessing. A pair has no image token: the prompt's image positions hold the vocabulary's last id
    (`runtime.vision` refuses a text that encodes to it)."""
    state, vision, layer, preprocess = load(path)
    args = LlavaArgs(vision=vision, text=text, image_token_id=text.vocab_size - 1, feature_layer=layer)
    with torch.device("meta"):
        model = Llava(args)
    wanted = {k for k in model.state_dict() if k.startswith(("vision_tower.", "multi_modal_projector."))
              and ".post_layernorm." not in k}  # the pooled output's norm, which LLaVA never reads
    missing, extra = wanted - set(state), set(state) - wanted
    if missing or extra:
        what = f"lacks {sorted(missing)[:3]}" if missing else f"has unexpected {sorted(extra)[:3]}"
        raise LlamalabError(f"{path}: the mmproj tensors do not fit its metadata: it {what}")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:
        raise LlamalabError(f"{path}: the mmproj tensors do not fit its metadata "
                            f"({str(e).splitlines()[-1].strip()})") from None
    if model.multi_modal_projector.linear_2.out_features != text.dim:
        raise LlamalabError(f"{path}: the projector gives {model.multi_modal_projector.linear_2.out_features}-wide "
                            f"features but the language model's width is {text.dim}; a projector for another model?")
    model.vision_tower.post_layernorm = nn.LayerNorm(vision.dim, eps=vision.norm_eps)
    model.language_model = language_model
    model.vision_tower.to(device)
    model.multi_modal_projector.to(device)
    return model.eval(), preprocess


def is_mmproj(path: Path) -> bool:
    """Whether `path` is a GGUF file of architecture "clip" (a projector file, not a language model)."""
    try:
        if not path.is_file():
            return False
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                return False
        return read_metadata(path).get("general.architecture") == "clip"
    except (OSError, LlamalabError):
        return False  # not ours to explain: the GGUF reader says what is wrong with it


def describe(path) -> list[str]:
    """`llamalab info`'s lines for an mmproj file."""
    state, v, layer, pre = load(path)
    count = {part: sum(w.numel() for k, w in state.items() if k.startswith(part))
             for part in ("vision_tower", "multi_modal_projector")}
    projector = state["multi_modal_projector.linear_2.weight"].shape[0]
    return ["format      mmproj (llama.cpp's LLaVA projector file: CLIP tower + MLP projector)", f"path        {path}",
            f"params      {sum(count.values()):,} (vision tower {count['vision_tower']:,}, projector "
            f"{count['multi_modal_projector']:,})",
            f"vision      clip: dim={v.dim} n_layers={v.n_layers} (kept) n_heads={v.n_heads} ffn_dim={v.ffn_dim} "
            f"image_size={v.image_size} patch_size={v.patch_size} act={v.act}",
            f"images      feature_layer={layer} image_tokens={v.n_patches} mean={pre.mean} std={pre.std}",
            f"projector   mlp (LLaVA-1.5) into a language model of width {projector}"]
