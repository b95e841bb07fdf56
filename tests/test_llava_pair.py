"""`llamalab convert` between a llava-hf directory and llama.cpp's pair (text GGUF + mmproj): on the tiny random
LLaVA transformers writes, llava-hf → pair → llava-hf gives transformers' logits again; the projector file we
write is what llama.cpp's converter writes (`test_mmproj.write_mmproj`, its layout followed line by line), and
reads back equal; a SigLIP tower goes there and back too; `info` describes the pair; a damaged projector file is one error line. (llama.cpp's own
reading of the pair: bench/mmproj_llama_cpp.py.)"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import CLIPImageProcessor, LlavaForConditionalGeneration

from cli_output import without_notices
from llamalab import formats
from llamalab.cli import main
from llamalab.errors import LlamalabError
from llamalab.formats import llava
from llamalab.formats import mmproj as mmproj_file
from test_mmproj import write_mmproj
from test_vision import IMAGE_TOKEN as VISION_IMAGE_TOKEN
from test_vision import write_llava
from tiny_llava import IMAGE_TOKEN, write_picture, write_tiny_llava


@pytest.fixture(scope="module")
def pair(tmp_path_factory, smollm2_gguf):
    """(transformers' model, its llava-hf directory, the pair's text GGUF and mmproj, the llava-hf written back)."""
    root = tmp_path_factory.mktemp("llava-pair")
    ref = write_tiny_llava(root / "llava-hf", smollm2_gguf)
    assert main(["convert", str(root / "llava-hf"), "--to", "gguf", "--out", str(root / "tiny.gguf")]) == 0
    assert main(["convert", str(root / "tiny.gguf"), "--mmproj", str(root / "mmproj-tiny.gguf"), "--to", "hf",
                 "--out", str(root / "back")]) == 0
    return ref, root / "llava-hf", root / "tiny.gguf", root / "mmproj-tiny.gguf", root / "back"


def test_round_trip_gives_transformers_logits(pair):
    ref, _, _, _, back = pair
    again = LlavaForConditionalGeneration.from_pretrained(back).eval()
    ids = torch.tensor([[1, 504, 2] + [IMAGE_TOKEN] * 4 + [198, 1780, 314]])
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for image in pixels:
            expected = ref(input_ids=ids, pixel_values=image[None]).logits
            got = again(input_ids=ids, pixel_values=image[None]).logits
            assert (got - expected).abs().max() < 1e-5
    assert again.config.vision_config.num_hidden_layers == 1  # the block after the feature layer is not kept
    processor = CLIPImageProcessor.from_pretrained(back)
    assert processor.crop_size == {"height": 28, "width": 28} and processor.image_mean[0] == pytest.approx(0.48145466)


def test_pair_reads_back_equal(pair):
    _, src, model, mmproj, _ = pair
    state, args, _ = llava.load_state(src)
    tower, vision, layer, _ = mmproj_file.load(mmproj)
    assert (vision.n_layers, layer, vision.dim, vision.act) == (1, 1, 24, "quick_gelu")
    kept = {k: w for k, w in state.items() if k.startswith(("vision_tower.", "multi_modal_projector."))
            and ".post_layernorm." not in k and ".layers.1." not in k}
    assert set(tower) == set(kept)
    assert all(torch.equal(tower[k], kept[k]) for k in kept)
    text = formats.load_state(model).state
    assert all(torch.equal(text[k.removeprefix("language_model.")], w) for k, w in state.items()
               if k.startswith("language_model."))


def test_f16_mmproj_is_the_converters(pair, tmp_path):
    """At f16 (the converter's default) every tensor — name, shape, GGML type, bytes — and every metadata value
    equal what llama.cpp's converter writes, but the name and clip.vision.projection_dim (the CLIP's own
    text-image projection, which a llava-hf tower does not keep: we write the projector's width)."""
    _, src, _, _, _ = pair
    assert main(["convert", str(src), "--to", "gguf", "--gguf-type", "f16", "--out", str(tmp_path / "t.gguf")]) == 0
    write_mmproj(LlavaForConditionalGeneration.from_pretrained(src).eval(), tmp_path / "converter.gguf")
    ours, theirs = GGUFReader(tmp_path / "mmproj-t.gguf"), GGUFReader(tmp_path / "converter.gguf")
    skip = {"general.name", "clip.vision.projection_dim", "general.description"}

    def fields(r):
        return {k: f.contents() for k, f in r.fields.items() if k not in skip and not k.startswith("GGUF.")}

    assert fields(ours) == fields(theirs)
    mine = {t.name: t for t in ours.tensors}
    assert set(mine) == {t.name for t in theirs.tensors}
    for t in theirs.tensors:
        assert (mine[t.name].tensor_type, list(mine[t.name].shape)) == (t.tensor_type, list(t.shape)), t.name
        assert np.array_equal(mine[t.name].data, t.data), t.name


def test_pair_and_llava_hf_generate_the_same(pair, tmp_path, capsys):
    _, src, model, mmproj, back = pair
    picture = write_picture(tmp_path / "picture.png")
    common = ["--image", str(picture), "--prompt", "What is in the picture?", "--max-new-tokens", "6",
              "--ignore-eos", "--no-stream"]
    outputs = []
    for where in (["--model", str(src)], ["--model", str(model), "--mmproj", str(mmproj)], ["--model", str(back)]):
        assert main(["generate", *where, *common]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0].strip()


def test_info_describes_the_pair(pair, capsys):
    _, _, model, mmproj, _ = pair
    assert main(["info", str(model), "--mmproj", str(mmproj)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("format      gguf") and "\nmmproj      " in out and "image_tokens=4" in out
    assert "pair        fits: the projector gives the language model's width (32)" in out


@pytest.mark.parametrize("damage", ["missing", "shape"])  # convert, info
def test_damaged_mmproj_is_one_line(pair, tmp_path, capsys, damage):
    _, src, model, _, _ = pair
    state, args, _ = llava.load_state(src)
    state = {k: w for k, w in state.items() if not k.startswith("language_model.")}
    if damage == "missing":
        del state["vision_tower.encoder.layers.0.self_attn.k_proj.bias"]
    else:
        state["multi_modal_projector.linear_1.weight"] = state["multi_modal_projector.linear_1.weight"][:, :20]
    bad = tmp_path / "mmproj-bad.gguf"
    mmproj_file.save(state, args, bad, preprocess=llava.preprocess_for(src, args), gguf_type="f32")
    command = (["convert", str(model), "--mmproj", str(bad), "--to", "hf", "--out", str(tmp_path / "out")]
               if damage == "missing" else ["info", str(model), "--mmproj", str(bad)])
    assert main(command) == 2
    err = without_notices(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "mmproj-bad.gguf" in err and "do not fit its metadata" in err, err
    assert ("k_proj.bias" if damage == "missing" else "(32, 20)") in err
    assert not (tmp_path / "out").exists()


def test_wrong_pairings_are_one_line(pair, smollm2_gguf, tmp_path, capsys):
    _, src, model, mmproj, _ = pair
    cases = [(["info", str(smollm2_gguf), "--mmproj", str(mmproj)], "another model"),
             (["convert", str(model), "--mmproj", str(model), "--to", "hf", "--out", str(tmp_path / "o")],
              "not an mmproj file"),
             (["convert", str(src), "--to", "meta", "--out", str(tmp_path / "m")], "converts to gguf"),
             (["convert", str(model), "--mmproj", str(mmproj), "--to", "gguf", "--out", str(tmp_path / "x.gguf")],
              "--mmproj"),
             (["convert", str(src), "--to", "gguf", "--out", str(tmp_path / "y.gguf"), "--mmproj",
               str(tmp_path / "y.gguf")], "a path of its own")]
    for command, what in cases:
        assert main(command) == 2, command
        err = without_notices(capsys.readouterr().err)
        assert len(err.splitlines()) == 1 and what in err, err
    assert not any(tmp_path.iterdir())


def test_siglip_round_trip(tmp_path):
    """A SigLIP tower (no class token: every patch kept, vision_feature_select_strategy "full") goes to the
    pair and back with transformers' logits; with "default" (transformers drops the first patch, which
    llama.cpp cannot) it is refused."""
    ref = write_llava(tmp_path / "siglip", "siglip")
    assert main(["convert", str(tmp_path / "siglip"), "--to", "gguf", "--out", str(tmp_path / "s.gguf")]) == 0
    assert main(["convert", str(tmp_path / "s.gguf"), "--mmproj", str(tmp_path / "mmproj-s.gguf"), "--to", "hf",
                 "--out", str(tmp_path / "back")]) == 0
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    ids = torch.tensor([[1, 5, 2] + [VISION_IMAGE_TOKEN] * 9 + [7, 8]])
    pixels = torch.randn(1, 3, 42, 42, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (again(input_ids=ids, pixel_values=pixels).logits - ref(input_ids=ids, pixel_values=pixels).logits
                ).abs().max() < 1e-5
    assert again.config.vision_feature_select_strategy == "full"
    args = llava.load_state(tmp_path / "siglip", lazy=True)[1]
    with pytest.raises(LlamalabError, match="'default'.*llama.cpp keeps every patch.*'full' for a siglip tower"):
        mmproj_file.check_writable(replace(args, feature_select="default"), "siglip")
    with pytest.raises(LlamalabError, match="vision activation 'relu'"):
        mmproj_file.check_writable(replace(args, vision=replace(args.vision, act="relu")), "siglip")
