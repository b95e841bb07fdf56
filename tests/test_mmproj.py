"""llama.cpp's LLaVA pair (a text GGUF + an `mmproj` GGUF): the projector file is written here with the `gguf`
package exactly as llama.cpp's `convert_image_encoder_to_gguf.py` lays it out (its tensor renaming, including
the legacy fc1 → `ffn_down` swap, the tower cut after the deepest feature layer, float16 matrices, its
`clip.*` metadata) from the tiny random llava-hf checkpoint of the vision tests; loaded by `formats.mmproj`, its
image features equal transformers' on the same weights, and `generate --mmproj --image` gives transformers'
greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFWriter
from PIL import Image

from llamalab import formats
from llamalab.cli import main
from llamalab.errors import LlamalabError
from llamalab.formats import llava
from llamalab.formats import mmproj as mmproj_file
from llamalab.generate import decode_text
from llamalab.images import preprocess
from llamalab.runtime import load_runnable
from llamalab.runtime.vision import image_prompt
from tiny_llava import IMAGE_TOKEN, write_picture, write_tiny_llava

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def converter_name(name: str) -> str:
    """convert_image_encoder_to_gguf.py's `get_tensor_name` for a CLIP vision tower and a LLaVA projector."""
    if name.startswith("model.mm_projector"):
        return name.replace("model.mm_projector", "mm")
    for old, new in (("text_model", "t"), ("vision_model", "v"), ("encoder.layers", "blk"), ("embeddings.", ""),
                     ("_proj", ""), ("self_attn.", "attn_"), ("layer_norm", "ln"), ("layernorm", "ln"),
                     ("mlp.fc1", "ffn_down"), ("mlp.fc2", "ffn_up"), ("embedding", "embd"), ("final", "post"),
                     ("layrnorm", "ln")):
        name = name.replace(old, new)
    return name


def write_mmproj(ref, out, feature_layer: int = -2) -> None:
    """The converter's output for `--llava-projector` (float16 default) on ref's tower and projector; ref's
    weights are rounded the same way, so that both sides hold the same numbers."""
    tower, projector = ref.model.vision_tower, ref.model.multi_modal_projector
    v = tower.config
    keep = v.num_hidden_layers + feature_layer + 1  # the converter's non-negative feature layer = the blocks kept
    w = GGUFWriter(str(out), arch="clip")
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_file_type(1)
    w.add_name("tiny-llava")
    w.add_description("image encoder for LLaVA")
    w.add_string("clip.projector_type", "mlp")
    w.add_uint32("clip.vision.image_size", v.image_size)
    w.add_uint32("clip.vision.patch_size", v.patch_size)
    w.add_uint32("clip.vision.embedding_length", v.hidden_size)
    w.add_uint32("clip.vision.feed_forward_length", v.intermediate_size)
    w.add_uint32("clip.vision.projection_dim", v.projection_dim)
    w.add_uint32("clip.vision.attention.head_count", v.num_attention_heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", v.layer_norm_eps)
    w.add_uint32("clip.vision.block_count", keep)
    w.add_array("clip.vision.feature_layer", [keep])
    w.add_array("clip.vision.image_mean", CLIP_MEAN)
    w.add_array("clip.vision.image_std", CLIP_STD)
    w.add_bool("clip.use_gelu", v.hidden_act == "gelu")
    with torch.no_grad():
        for name, p in {f"model.mm_projector.{'0' if k.startswith('linear_1') else '2'}.{k.split('.')[-1]}": p
                        for k, p in projector.named_parameters()}.items():
            half = p.ndim == 2
            w.add_tensor(converter_name(name), p.numpy().astype(np.float16 if half else np.float32))
            if half:
                p.copy_(p.half().float())
        for name, p in tower.named_parameters():
            name = name if name.startswith("vision_model.") else "vision_model." + name  # CLIPVisionModel's names
            skip = name.startswith("vision_model.post_layernorm") or \
                any(name.startswith(f"vision_model.encoder.layers.{i}.") for i in range(keep, v.num_hidden_layers))
            if skip:
                continue
            half = p.ndim == 4 or (p.ndim == 2 and name.endswith(".weight"))
            w.add_tensor(converter_name(name), p.squeeze().numpy().astype(np.float16 if half else np.float32))
            if half:
                p.copy_(p.half().float())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, smollm2_gguf):
    root = tmp_path_factory.mktemp("pair")
    ref = write_tiny_llava(root / "llava-hf", smollm2_gguf)
    state, args, _ = llava.load_state(root / "llava-hf")
    text = {k.removeprefix("language_model."): w for k, w in state.items() if k.startswith("language_model.")}
    formats.save(text, args.text, root / "tiny.gguf", "gguf", tokenizer_src=root / "llava-hf")
    write_mmproj(ref, root / "mmproj-tiny.gguf")
    return ref, root / "tiny.gguf", root / "mmproj-tiny.gguf", write_picture(root / "picture.png")


@pytest.fixture(scope="module")
def rt(pair):
    return load_runnable(pair[1], device="cpu", mmproj=pair[2])


def test_image_features_equal_transformers(pair, rt):
    ref, model, mmproj, picture = pair
    pixels = torch.from_numpy(preprocess(Image.open(picture), rt.preprocess))[None]
    with torch.no_grad():
        expected = ref.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                                vision_feature_select_strategy="default")
        expected = torch.cat(list(expected.pooler_output if hasattr(expected, "pooler_output") else expected))
        got = rt.vision.image_features(pixels)[0]
    assert got.shape == expected.shape == (4, 32)
    assert (got - expected).abs().max() < 1e-5


def test_generate_with_mmproj_gives_transformers_tokens(pair, rt, capsys):
    ref, model, mmproj, picture = pair
    ids, _ = image_prompt(rt, "What is in the picture?", [picture])
    theirs = [IMAGE_TOKEN if t == rt.vision.args.image_token_id else t for t in ids]
    pixels = torch.from_numpy(preprocess(Image.open(picture), rt.preprocess))[None]
    with torch.no_grad():
        expected = ref.generate(input_ids=torch.tensor([theirs]), pixel_values=pixels, max_new_tokens=8,
                                do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
    assert main(["generate", "--model", str(model), "--mmproj", str(mmproj), "--image", str(picture), "--prompt",
                 "What is in the picture?", "--max-new-tokens", "8", "--ignore-eos", "--no-stream"]) == 0
    assert capsys.readouterr().out == decode_text(expected, rt.tokenizer)


def test_bad_mmproj_is_one_line(pair, tmp_path, capsys):
    _, model, mmproj, picture = pair
    with pytest.raises(LlamalabError, match="not an mmproj file"):
        mmproj_file.load(model)
    (tmp_path / "cut.gguf").write_bytes(mmproj.read_bytes()[:2000])
    assert main(["generate", "--model", str(model), "--mmproj", str(tmp_path / "cut.gguf"), "--image", str(picture),
                 "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "cut.gguf" in err and "Traceback" not in err


def test_info_describes_an_mmproj_file(pair, capsys):
    assert main(["info", str(pair[2])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("format      mmproj") and "n_layers=1 (kept)" in out and "image_tokens=4" in out
    assert "feature_layer=1" in out and "width 32" in out
