"""llama.cpp's LLaVA projector file (`mmproj-*.gguf`, architecture "clip"): the vision tower and the LLaVA-1.5
MLP projector that go with a text GGUF (the pair `llama-mtmd-cli -m LLM.gguf --mmproj mmproj.gguf`); read
(`load`, `attach`) and written (`save`, what `convert --to gguf` writes beside a llava-hf's text GGUF).

Its layout, as llama.cpp's `convert_image_encoder_to_gguf.py` writes it and `tools/mtmd/clip.cpp` reads it:

- metadata `clip.has_vision_encoder`, `clip.projector_type` ("mlp": LLaVA-1.5's), `clip.use_gelu` (else
  quick-GELU; ggml's GELU is the tanh form, SigLIP's), and `clip.vision.*`: image_size, patch_size,
  embedding_length, feed_forward_length, attention.head_count, attention.layer_norm_epsilon, block_count (the
  blocks kept: the converter drops those after the deepest feature layer), feature_layer (indices into the
  hidden states, 0 = the blocks' input, non-negative), image_mean, image_std;
- tensors `v.class_embd`, `v.patch_embd.weight`, `v.position_embd.weight`, `v.pre_ln.*`, per block
  `v.blk.N.{ln1,ln2,attn_q,attn_k,attn_v,attn_out,ffn_up,ffn_down}.*`, and the projector `mm.0.*`, `mm.2.*`.
  The legacy converter names a block's fc1 `ffn_down` and fc2 `ffn_up`; clip.cpp tells them apart by shape, and
  so do we (fc1 is the one that reads the tower's width). We write those names too.
- A SigLIP tower has no `v.class_embd` nor `v.pre_ln`, and a `v.patch_embd.bias`; llama.cpp keeps every patch
  of it (transformers' vision_feature_select_strategy "full").

Without `clip.vision.feature_layer` the last kept block's output is the feature (the converter dropped the
final block: LLaVA's -2); the class token is dropped (LLaVA's "default" strategy), as clip.cpp does. We always
write feature_layer: without it clip.cpp runs one block fewer than the file holds.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFWriter
from torch import nn

from ..atomic import staged_file
from ..config import ModelArgs
from ..errors import LlamalabError
from ..images import Preprocess
from ..model import Transformer
from ..tokenizer import open_gguf
from ..vision import Llava, LlavaArgs, Projector, VisionArgs, VisionTower
from .gguf import _to_torch, read_metadata
from .output import check_output

BLOCK = {"ln1": "layer_norm1", "ln2": "layer_norm2", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
         "attn_v": "self_attn.v_proj", "attn_out": "self_attn.out_proj"}
TOP = {"v.class_embd": "embeddings.class_embedding", "v.patch_embd.weight": "embeddings.patch_embedding.weight",
       "v.position_embd.weight": "embeddings.position_embedding.weight", "v.pre_ln.weight": "pre_layrnorm.weight",
       "v.pre_ln.bias": "pre_layrnorm.bias", "v.patch_embd.bias": "embeddings.patch_embedding.bias"}


def _vision_args(meta: dict, path, kind: str) -> VisionArgs:
    def need(key):
        if f"clip.vision.{key}" not in meta:
            raise LlamalabError(f"{path}: mmproj metadata lacks 'clip.vision.{key}'")
        return meta[f"clip.vision.{key}"]

    gelu = "gelu" if kind == "clip" else "gelu_pytorch_tanh"  # ggml's GELU is the tanh form: SigLIP's
    return VisionArgs(kind=kind, dim=int(need("embedding_length")), n_layers=int(need("block_count")),
                      n_heads=int(need("attention.head_count")), ffn_dim=int(need("feed_forward_length")),
                      image_size=int(need("image_size")), patch_size=int(need("patch_size")),
                      norm_eps=float(need("attention.layer_norm_epsilon")),
                      act=gelu if meta.get("clip.use_gelu") else "quick_gelu")


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
    args = _vision_args(meta, path, "clip" if any(t.name == "v.class_embd" for t in reader.tensors) else "siglip")
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
        raise LlamalabError(f"{path}: mmproj tensors {unknown[:4]} are not LLaVA-1.5's (a CLIP or SigLIP tower and "
                            "an MLP projector); this projector is not supported")
    layers = [int(i) for i in meta.get("clip.vision.feature_layer", [])] or [args.n_layers]
    if any(not 0 <= i <= args.n_layers for i in layers):
        raise LlamalabError(f"{path}: clip.vision.feature_layer {layers} lies outside the {args.n_layers} blocks")
    mean = tuple(float(x) for x in meta.get("clip.vision.image_mean", Preprocess().mean))
    std = tuple(float(x) for x in meta.get("clip.vision.image_std", Preprocess().std))
    size = args.image_size
    preprocess = (Preprocess(shortest_edge=size, crop=(size, size), mean=mean, std=std) if args.class_token
                  else Preprocess(height=size, width=size, mean=mean, std=std))
    return state, args, layers[0] if len(layers) == 1 else tuple(layers), preprocess


def feature_select(vision: VisionArgs) -> str:
    """What llama.cpp keeps of the tower's output: every patch, without the class token when there is one."""
    return "default" if vision.class_token else "full"


def fit(state: dict[str, torch.Tensor], vision: VisionArgs, layer, path) -> int:
    """Check that the tower's and projector's tensors are exactly those its metadata implies, shapes included
    (one clear error naming the file, else); returns the width of the projector's output."""
    layers = layer if isinstance(layer, tuple) else (layer,)
    out = state.get("multi_modal_projector.linear_2.weight")
    with torch.device("meta"):
        model = nn.ModuleDict({"vision_tower": VisionTower(vision), "multi_modal_projector": Projector(
            vision.dim * len(layers), out.shape[0] if out is not None and out.ndim == 2 else 1)})
    wanted = {k for k in model.state_dict() if ".post_layernorm." not in k}  # the pooled output's norm,
    missing, extra = wanted - set(state), set(state) - wanted                # which LLaVA never reads
    if missing or extra:
        what = f"lacks {sorted(missing)[:3]}" if missing else f"has unexpected {sorted(extra)[:3]}"
        raise LlamalabError(f"{path}: the mmproj tensors do not fit its metadata: it {what}")
    for key, w in model.state_dict().items():
        if key in state and tuple(state[key].shape) != tuple(w.shape):
            raise LlamalabError(f"{path}: the mmproj tensors do not fit its metadata: {key} is "
                                f"{tuple(state[key].shape)}, want {tuple(w.shape)}")
    return out.shape[0]


def attach(language_model: Transformer, text: ModelArgs, path, device="cpu") -> tuple[Llava, Preprocess]:
    """A `Llava` of the mmproj file's tower and projector around an already loaded language model, and its
    image preprocessing. A pair has no image token: the prompt's image positions hold the vocabulary's last id
    (`runtime.vision` refuses a text that encodes to it)."""
    state, vision, layer, preprocess = load(path)
    width = fit(state, vision, layer, path)
    if width != text.dim:
        raise LlamalabError(f"{path}: the projector gives {width}-wide features but the language model's width "
                            f"is {text.dim}; a projector for another model?")
    args = LlavaArgs(vision=vision, text=text, image_token_id=text.vocab_size - 1, feature_layer=layer,
                     feature_select=feature_select(vision))
    with torch.device("meta"):
        model = Llava(args)
    model.load_state_dict(state, strict=False, assign=True)
    model.vision_tower.post_layernorm = nn.LayerNorm(vision.dim, eps=vision.norm_eps)
    model.language_model = language_model
    model.vision_tower.to(device)
    model.multi_modal_projector.to(device)
    return model.eval(), preprocess


def _first_key(f) -> tuple[str, str] | None:
    """The first metadata pair of an open little-endian GGUF v2/v3 file when its value is a string (writers put
    `general.architecture` first), read without parsing the rest (a vocabulary of 10⁵ strings takes seconds)."""
    version, _, n_kv = struct.unpack("<IQQ", f.read(20))
    if version not in (2, 3) or n_kv == 0:
        return None
    (size,) = struct.unpack("<Q", f.read(8))
    key = f.read(min(size, 256)).decode("utf-8", "replace")
    (kind,) = struct.unpack("<I", f.read(4))
    if kind != 8:  # GGUF's string
        return None
    (size,) = struct.unpack("<Q", f.read(8))
    return key, f.read(min(size, 256)).decode("utf-8", "replace")


def is_mmproj(path: Path) -> bool:
    """Whether `path` is a GGUF file of architecture "clip" (a projector file, not a language model)."""
    try:
        if not path.is_file():
            return False
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                return False
            first = _first_key(f)
        if first is not None and first[0] == "general.architecture":
            return first[1] == "clip"
        return read_metadata(path).get("general.architecture") == "clip"
    except (OSError, LlamalabError, struct.error):
        return False  # not ours to explain: the GGUF reader says what is wrong with it


def describe(path, text_dim: int | None = None) -> list[str]:
    """`llamalab info`'s lines for an mmproj file; `text_dim`: the width of the language model it is paired
    with (`info MODEL.gguf --mmproj FILE`), which its projector must give."""
    state, v, layer, pre = load(path)
    width = fit(state, v, layer, path)
    if text_dim is not None and width != text_dim:
        raise LlamalabError(f"{path}: the projector gives {width}-wide features but the language model's width "
                            f"is {text_dim}; a projector for another model?")
    count = {part: sum(w.numel() for k, w in state.items() if k.startswith(part))
             for part in ("vision_tower", "multi_modal_projector")}
    lines = ["format      mmproj (llama.cpp's LLaVA projector file: vision tower + MLP projector)", f"path        {path}",
             f"params      {sum(count.values()):,} (vision tower {count['vision_tower']:,}, projector "
             f"{count['multi_modal_projector']:,})",
             f"vision      {v.kind}: dim={v.dim} n_layers={v.n_layers} (kept) n_heads={v.n_heads} ffn_dim={v.ffn_dim} "
             f"image_size={v.image_size} patch_size={v.patch_size} act={v.act}",
             f"images      feature_layer={layer} image_tokens={v.n_patches} mean={pre.mean} std={pre.std}",
             f"projector   mlp (LLaVA-1.5) into a language model of width {width}"]
    if text_dim is not None:
        lines[:2] = [f"mmproj      {path} (llama.cpp's LLaVA projector file: vision tower + MLP projector)"]
        lines.append(f"pair        fits: the projector gives the language model's width ({text_dim})")
    return lines


# ---------------------------------------------------------------------------------------------- write

def feature_layers(args: LlavaArgs) -> list[int]:
    """The feature layer(s) as the converter writes them: non-negative hidden-state indices."""
    n = args.vision.n_layers
    layers = args.feature_layer if isinstance(args.feature_layer, tuple) else (args.feature_layer,)
    return [i if i >= 0 else n + i + 1 for i in layers]


def check_writable(args: LlavaArgs, where) -> None:
    """Refuse (one clear error) a LLaVA that llama.cpp's LLaVA-1.5 projector file cannot hold."""
    v, keep = args.vision, "; keep it as a llava-hf directory"
    acts = ("gelu", "quick_gelu") if v.kind == "clip" else ("gelu_pytorch_tanh", "quick_gelu")
    if v.act not in acts:
        raise LlamalabError(f"{where}: vision activation {v.act!r}: an mmproj file's {v.kind} tower has "
                            f"{' or '.join(acts)}{keep}")
    if args.feature_select != feature_select(v):
        raise LlamalabError(f"{where}: vision_feature_select_strategy {args.feature_select!r}: llama.cpp keeps every "
                            f"patch ({feature_select(v)!r} for a {v.kind} tower){keep}")
    if args.projector_act != "gelu" or not args.projector_bias:
        raise LlamalabError(f"{where}: the projector ({args.projector_act}, bias={args.projector_bias}) is not "
                            f"LLaVA-1.5's MLP (gelu, biases){keep}")
    if any(not 0 <= i <= v.n_layers for i in feature_layers(args)):
        raise LlamalabError(f"{where}: vision_feature_layer {args.feature_layer} lies outside the tower's "
                            f"{v.n_layers} blocks")


def _gguf_name(key: str) -> str:
    """`_name`'s inverse; a block's fc1 / fc2 as the converter names them (`ffn_down` / `ffn_up`)."""
    top = {f"vision_tower.{ours}": theirs for theirs, ours in TOP.items()}
    if key in top:
        return top[key]
    if key.startswith("multi_modal_projector.linear_"):
        which, leaf = key.removeprefix("multi_modal_projector.linear_").split(".")
        return f"mm.{0 if which == '1' else 2}.{leaf}"
    block, rest = key.removeprefix("vision_tower.encoder.layers.").split(".", 1)
    kind, leaf = rest.rsplit(".", 1)
    ours = {v: k for k, v in BLOCK.items()} | {"mlp.fc1": "ffn_down", "mlp.fc2": "ffn_up"}
    return f"v.blk.{block}.{ours[kind]}.{leaf}"


def _tensors(state: dict[str, torch.Tensor], keep: int, gguf_type: str) -> dict[str, np.ndarray]:
    """The converter's tensors: the projector, then the tower up to block `keep` (the rest, and the pooled
    output's norm, are never read); at f16 every matrix and the patch convolution in float16, the rest f32."""
    out = {}
    chosen = [k for k in state if k.startswith("multi_modal_projector.")] + [
        k for k in state if k.startswith("vision_tower.") and ".post_layernorm." not in k
        and not (k.startswith("vision_tower.encoder.layers.") and int(k.split(".")[3]) >= keep)]
    for key in chosen:
        w = state[key].detach().to(torch.float32).cpu().numpy()
        half = gguf_type == "f16" and (w.ndim == 4 or (w.ndim == 2 and key.endswith(".weight")))
        out[_gguf_name(key)] = w.astype(np.float16) if half else w
    return out


def save(state: dict[str, torch.Tensor], args: LlavaArgs, out, *, preprocess: Preprocess, gguf_type: str = "f16",
         name: str | None = None, force: bool = False) -> Path:
    """Write the tower and projector of a LLaVA state dict (`vision_tower.*`, `multi_modal_projector.*`) as
    llama.cpp's projector file, the layout `convert_image_encoder_to_gguf.py --llava-projector` gives it:
    `clip.*` metadata, the blocks after the deepest feature layer dropped, f16 (its default) or f32 (every
    tensor: lossless; the converter keeps the patch convolution and projector at f16 even then). Atomic."""
    if gguf_type not in ("f16", "f32"):
        raise LlamalabError(f"an mmproj file is written f16 or f32, not {gguf_type!r}")
    check_writable(args, out)
    check_output(out, "gguf", force=force)
    v, layers = args.vision, feature_layers(args)
    tensors = _tensors(state, max(layers), gguf_type)
    out = Path(out)
    with staged_file(out) as tmp:
        w = GGUFWriter(tmp, "clip")
        for key, value in (("has_text_encoder", False), ("has_vision_encoder", True), ("has_llava_projector", True),
                           ("use_gelu", v.act in ("gelu", "gelu_pytorch_tanh"))):
            w.add_bool(f"clip.{key}", value)
        w.add_file_type(1 if gguf_type == "f16" else 0)
        w.add_name(name or out.stem)
        w.add_description("image encoder for LLaVA")
        w.add_string("clip.projector_type", "mlp")
        for key, value in (("image_size", v.image_size), ("patch_size", v.patch_size), ("embedding_length", v.dim),
                           ("feed_forward_length", v.ffn_dim), ("projection_dim", args.text.dim),
                           ("attention.head_count", v.n_heads), ("block_count", max(layers))):
            w.add_uint32(f"clip.vision.{key}", value)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", v.norm_eps)
        w.add_array("clip.vision.feature_layer", layers)
        w.add_array("clip.vision.image_mean", [float(x) for x in preprocess.mean])
        w.add_array("clip.vision.image_std", [float(x) for x in preprocess.std])
        for key, data in tensors.items():
            w.add_tensor(key, data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out
