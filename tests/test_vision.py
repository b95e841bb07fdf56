"""LLaVA against transformers: small random-weight `LlavaForConditionalGeneration` checkpoints written by
transformers itself (CLIP tower; SigLIP tower; several feature layers), loaded by `formats.llava` into our
`vision.Llava` — the same logits within 1e-4 and the same greedy tokens on the same image and prompt."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          SiglipVisionConfig)

from llamalab.cli import main
from llamalab.errors import LlamalabError
from llamalab.formats import llava

IMAGE_TOKEN = 63
VISION = {
    "clip": (CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                              image_size=42, patch_size=14, projection_dim=16), -2, "default"),
    "clip-layers": (CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=3,
                                     num_attention_heads=2, image_size=28, patch_size=14), [-3, -1], "full"),
    "siglip": (SiglipVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                                  image_size=42, patch_size=14, vision_use_head=True), -1, "full"),
}


def write_llava(out, kind: str) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    vision, layer, select = VISION[kind]
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                      vision_feature_layer=layer, vision_feature_select_strategy=select)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(out)
    return model


@pytest.fixture(scope="module", params=sorted(VISION))
def pair(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    ref = write_llava(out, request.param)
    return ref, llava.load_model(out), out


def prompt_and_image(ours, images: int = 1):
    torch.manual_seed(1)
    pixels = torch.randn(images, 3, ours.args.vision.image_size, ours.args.vision.image_size)
    ids = [1, 5]
    for _ in range(images):
        ids += [IMAGE_TOKEN] * ours.args.image_tokens + [7, 9]
    return torch.tensor([ids]), pixels


@torch.no_grad()
def test_logits_equal_transformers(pair):
    ref, ours, _ = pair
    for images in (1, 2):
        ids, pixels = prompt_and_image(ours, images)
        expected = ref(input_ids=ids, pixel_values=pixels).logits
        got = ours(ids, pixels)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 1e-4


@torch.no_grad()
def test_greedy_tokens_equal_transformers(pair):
    ref, ours, _ = pair
    ids, pixels = prompt_and_image(ours)
    expected = ref.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False,
                            pad_token_id=0)[0, ids.shape[1]:].tolist()
    got = ids
    for _ in range(6):
        nxt = ours(got, pixels, last_only=True)[0, -1].argmax()
        got = torch.cat([got, nxt.view(1, 1)], dim=1)
    assert got[0, ids.shape[1]:].tolist() == expected


def test_image_token_count_must_match(pair):
    _, ours, _ = pair
    ids, pixels = prompt_and_image(ours)
    with pytest.raises(ValueError, match="image tokens"):
        ours(ids[:, :-3], pixels)
    with pytest.raises(ValueError, match="no image"):
        ours(ids)


def test_bad_config_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava", "text_config": {}, "vision_config": '
                                          '{"model_type": "pixtral"}, "image_token_id": 3}')
    with pytest.raises(LlamalabError, match="lacks 'hidden_size'|not supported"):
        llava.load_state(tmp_path)


@torch.no_grad()
def test_saved_checkpoint_loads_in_transformers(pair, tmp_path):
    _, ours, _ = pair
    llava.save(ours.state_dict(), ours.args, tmp_path / "out")
    back, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    ids, pixels = prompt_and_image(ours, 2)
    assert (back.eval()(input_ids=ids, pixel_values=pixels).logits - ours(ids, pixels)).abs().max() < 1e-4
    again = llava.load_model(tmp_path / "out")
    assert all(torch.equal(w, again.state_dict()[k]) for k, w in ours.state_dict().items())


def test_hub_config_leaves_out_transformers_defaults(tmp_path):
    """llava-1.5-7b-hf's config.json as published: most sizes are transformers' defaults, left out."""
    (tmp_path / "config.json").write_text('''{"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
      "ignore_index": -100, "image_token_index": 32000, "pad_token_id": 32001, "projector_hidden_act": "gelu",
      "text_config": {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096, "model_type": "llama",
                      "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
      "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type":
                        "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14,
                        "projection_dim": 768, "vocab_size": 32000},
      "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}''')
    ref = LlavaConfig(**{k: v for k, v in json.loads((tmp_path / "config.json").read_text()).items()
                         if k not in ("architectures", "model_type")})
    args = llava.args_from_config(json.loads((tmp_path / "config.json").read_text()), "x")
    assert (args.text.dim, args.text.n_layers, args.text.n_heads, args.text.hidden_dim, args.text.vocab_size) == \
        (ref.text_config.hidden_size, ref.text_config.num_hidden_layers, ref.text_config.num_attention_heads,
         ref.text_config.intermediate_size, 32064)
    v = ref.vision_config
    assert (args.vision.dim, args.vision.n_layers, args.vision.image_size, args.vision.patch_size, args.vision.act,
            args.vision.norm_eps) == (v.hidden_size, v.num_hidden_layers, v.image_size, v.patch_size, v.hidden_act,
                                      v.layer_norm_eps)
    assert args.image_tokens == 576 and args.image_token_id == 32000


def test_info_describes_it_and_other_commands_refuse_in_one_line(pair, capsys, tmp_path):
    ref, ours, out = pair
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"params      {sum(p.numel() for p in ours.parameters()):,}" in text
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for k, p in ref.named_parameters()
                                                           if ".head." not in k)  # SigLIP's pooling head: unread
    assert f"image_tokens={ours.args.image_tokens}" in text and ours.args.vision.kind in text
    assert main(["quantize", "--model", str(out), "--bits", "8", "--out", str(tmp_path / "x")]) == 2  # convert reads it now
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LLaVA" in err and not (tmp_path / "x").exists()
