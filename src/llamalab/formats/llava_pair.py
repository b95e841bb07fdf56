"""A llava-hf directory ⇄ llama.cpp's pair (a text GGUF + its `mmproj` projector file): `llamalab convert`.

    convert llava-1.5-7b-hf --to gguf --out llava.gguf      → llava.gguf + mmproj-llava.gguf (or --mmproj OUT)
    convert llava.gguf --mmproj mmproj-llava.gguf --to hf --out llava-hf

The text GGUF is the language model as `gguf.save` writes any LLaMA (its vocabulary, image token included);
the projector file as `mmproj.save` writes it (llama.cpp's converter's layout). Back to llava-hf, the tower
keeps only the blocks the projector file holds (the converter dropped those after the deepest feature layer,
so the feature layer becomes -1 for the last one kept), the pooled output's norm (which LLaVA never reads) is
the identity, and the image token is the vocabulary's `<image>` if it has one, else its last id (what
`generate --mmproj` uses). A pair's image preprocessing is its size, mean and std: CLIP's or SigLIP's processor
is written with them. A SigLIP tower (no class token) goes with vision_feature_select_strategy "full": llama.cpp
keeps every patch of it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..bounded import read_json
from ..errors import LlamalabError
from ..images import Preprocess
from ..tokenizer import tokenizer_from_gguf_fields
from ..vision import LlavaArgs
from . import gguf, llava, mmproj
from .output import check_output
from .shapes import check_state


def mmproj_path(out) -> Path:
    """Where `--to gguf` puts the projector file when no `--mmproj` names it: `mmproj-<out's name>` beside it."""
    return Path(out).with_name(f"mmproj-{Path(out).name}")


def to_pair(src: Path, out, mmproj_out=None, *, gguf_type: str = "f32", force: bool = False) -> tuple[Path, Path]:
    """A llava-hf directory → (text GGUF `out`, projector file): the matrices at gguf_type (the projector file
    at f16 unless f32). Everything is checked before either file is written; each is written atomically."""
    mmproj_out = Path(mmproj_out) if mmproj_out else mmproj_path(out)
    if Path(out).resolve() == mmproj_out.resolve():
        raise LlamalabError(f"--mmproj {mmproj_out}: the projector file needs a path of its own, not --out's")
    check_output(out, "gguf", force=force, inputs=[src])
    check_output(mmproj_out, "gguf", force=force, inputs=[src])
    state, args, _ = llava.load_state(src)
    mmproj.check_writable(args, src)
    text = {k.removeprefix("language_model."): w for k, w in state.items() if k.startswith("language_model.")}
    vision = {k: w for k, w in state.items() if not k.startswith("language_model.")}
    gguf.save(text, args.text, out, gguf_type=gguf_type, tokenizer_src=src, force=force)
    mmproj.save(vision, args, mmproj_out, preprocess=llava.preprocess_for(src, args),
                gguf_type="f32" if gguf_type == "f32" else "f16", name=Path(src).name, force=force)
    return Path(out), mmproj_out


def processor_config(p: Preprocess, size: int, kind: str) -> dict:
    """The `preprocessor_config.json` of a pair's tower (CLIPImageProcessor's or SiglipImageProcessor's) for
    its image size, mean and std."""
    common = {"do_convert_rgb": True, "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
              "do_normalize": True, "image_mean": list(p.mean), "image_std": list(p.std)}
    if kind == "siglip":
        return {"image_processor_type": "SiglipImageProcessor", **common, "size": {"height": size, "width": size}}
    return {"image_processor_type": "CLIPImageProcessor", **common, "size": {"shortest_edge": size},
            "do_center_crop": True, "crop_size": {"height": size, "width": size}}


def from_pair(model: Path, mmproj_file, out, *, dtype: torch.dtype | None = None, max_shard_size=5 * 10**9,
              force: bool = False) -> Path:
    """(text GGUF, projector file) → a llava-hf directory transformers' LlavaForConditionalGeneration loads."""
    check_output(out, "hf", force=force, inputs=[model, mmproj_file])
    if mmproj.is_mmproj(Path(model)) or not Path(model).is_file():
        raise LlamalabError(f"{model}: give the pair's text GGUF file as the source (and --mmproj its projector)")
    text_state, text_args, extra = gguf.load_state(model)
    check_state(text_state, text_args, model)
    vision_state, vision, layer, preprocess = mmproj.load(mmproj_file)
    width = mmproj.fit(vision_state, vision, layer, mmproj_file)
    if width != text_args.dim:
        raise LlamalabError(f"{mmproj_file}: the projector gives {width}-wide features but {model}'s language "
                            f"model is {text_args.dim} wide; a projector for another model?")
    fields = extra.get("tokenizer_fields", {})
    tokenizer = tokenizer_from_gguf_fields(fields, source=str(model)) if "tokenizer.ggml.tokens" in fields else None
    token = tokenizer.piece_to_id("<image>") if tokenizer is not None else None
    n = vision.n_layers
    layers = tuple(i - n - 1 if i == n else i for i in (layer if isinstance(layer, tuple) else (layer,)))
    args = LlavaArgs(vision=vision, text=text_args, image_token_id=text_args.vocab_size - 1 if token is None else token,
                     feature_layer=layers if len(layers) > 1 else layers[0],
                     feature_select=mmproj.feature_select(vision))
    state = {**vision_state, **{f"language_model.{k}": w for k, w in text_state.items()},
             "vision_tower.post_layernorm.weight": torch.ones(vision.dim),  # the pooled output's, never read
             "vision_tower.post_layernorm.bias": torch.zeros(vision.dim)}
    dtype = dtype or text_state["tok_embeddings.weight"].dtype
    processor = processor_config(preprocess, vision.image_size, vision.kind)
    return llava.save(state, args, out, tokenizer_src=tokenizer, preprocess=processor,
                      dtype=dtype if dtype.is_floating_point else torch.float32, max_shard_size=max_shard_size,
                      force=force)


def convert(src: Path, out, to: str, *, mmproj_file=None, dtype=None, gguf_type=None, max_shard_size=5 * 10**9,
            force: bool = False, log=print) -> Path:
    """`formats.convert` for a LLaVA: a llava-hf directory to the pair (`to` "gguf") or to llava-hf again
    (`to` "hf": another dtype), a text GGUF with `mmproj_file` to llava-hf."""
    if llava.is_llava(src):
        src = src if src.is_dir() else src.parent
        if to == "gguf":
            text, proj = to_pair(src, out, mmproj_file, gguf_type=gguf_type or "f32", force=force)
            written, what = text, f"gguf + mmproj {proj}"
        elif to == "hf" and not mmproj_file:
            check_output(out, "hf", force=force, inputs=[src])
            state, args, _ = llava.load_state(src)
            processor = src / "preprocessor_config.json"
            written, what = llava.save(state, args, out, tokenizer_src=src, dtype=dtype or torch.float32,
                                       max_shard_size=max_shard_size, force=force,
                                       preprocess=read_json(processor) if processor.is_file() else None), "llava-hf"
        else:
            raise LlamalabError(f"{src}: a llava-hf checkpoint converts to gguf (llama.cpp's pair; --mmproj names "
                                "the projector file) or to hf, not to meta")
    elif to == "hf" and mmproj_file:
        written, what = from_pair(src, mmproj_file, out, dtype=dtype, max_shard_size=max_shard_size, force=force), \
            f"llava-hf, from {src} + mmproj {mmproj_file}"
    else:
        raise LlamalabError("--mmproj: with a llava-hf source it names the projector file to write (--to gguf); "
                            "with a text GGUF source, the projector file to read (--to hf)")
    if log:
        log(f"wrote {written} ({what})")
    return written
