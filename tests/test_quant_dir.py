"""`llamalab quantize --out DIR`: group codes in an HF-style safetensors directory, read back quantized.

Expected values: the codes are `llamalab.quant.quantize` of the source weights (round to nearest, per
group), checked against the GGUF path's blocks from the `gguf` package (Q8_0 / Q4_1, group 32), and the
4-bit directory's perplexity against the float model's on the real SmolLM2."""

import json

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

import llamalab
from llamalab.cli import main
from llamalab.config import ModelArgs
from llamalab.formats import load_state, save
from llamalab.generate import generate
from llamalab.perplexity import perplexity
from llamalab.quant import GroupCodes, QuantLinear, quantize
from tiny import random_state

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=64,
                 tie_embeddings=True)


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    return save(random_state(ARGS), ARGS, tmp_path_factory.mktemp("qd") / "tiny-f32.gguf", "gguf", gguf_type="f32")


@pytest.mark.parametrize("bits, group", [(8, 32), (4, 32), (4, 64)])
def test_directory_round_trip(f32_gguf, tmp_path, capsys, bits, group):
    out = tmp_path / f"q{bits}g{group}"
    assert main(["quantize", "--model", str(f32_gguf), "--bits", str(bits), "--group-size", str(group),
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["bits"] == bits and cfg["group_size"] == group and cfg["quant_method"] == "llamalab"
    capsys.readouterr()
    assert main(["info", str(out), "--tensors"]) == 0  # what is stored, not what it dequantizes to
    shown = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.startswith("  "))
    assert shown["layers.1.feed_forward.w2.weight"].endswith(f"int{bits} (group {group})")
    assert shown["tok_embeddings.weight"].endswith(f"int8 (group {group})")  # the embedding keeps 8 bits
    assert shown["layers.1.ffn_norm.weight"].endswith("float32")
    source, _, _, _, _ = load_state(f32_gguf)
    codes, _, _, fmt, _ = load_state(out, quantized=True)
    assert fmt == "hf" and set(codes) == set(source)
    for name, w in source.items():
        got = codes[name]
        if w.ndim == 1:
            assert torch.equal(got, w), name
            continue
        # the codes read back (through HF's rotary row order and back) are exactly the codes of the source
        want = quantize(w, 8 if name == "tok_embeddings.weight" else bits, group)
        assert isinstance(got, GroupCodes) and (got.bits, got.group_size) == (want.bits, group), name
        for part in ("q", "scale", "zero"):
            assert torch.equal(getattr(got, part), getattr(want, part)), (name, part)
        if group == 32:  # the GGUF path's blocks of the same weights decode to the same values, to fp16 rounding
            kind = Q.Q8_0 if want.bits == 8 else Q.Q4_1
            gguf_w = torch.from_numpy(gguf_dequantize(gguf_quantize(w.numpy(), kind), kind))
            step = want.scale.float().repeat_interleave(group, -1)
            assert ((got.dequantize() - gguf_w).abs() <= 0.01 * step + 1e-6).float().mean() > 0.999, name
        # and within the quantization's definition of the float weights: half a step (+ fp16 rounding)
        err = (got.dequantize() - w).abs()
        assert (err <= 0.5 * got.scale.float().repeat_interleave(group, -1) * 1.01 + 1e-3).all(), name
    q = llamalab.load(out, dtype=None, tokenizer=False).model
    f = llamalab.load(out, dtype=torch.float32, tokenizer=False).model
    assert isinstance(q.layers[0].attention.wq, QuantLinear)
    assert torch.equal(f.layers[1].attention.wk.weight, codes["layers.1.attention.wk.weight"].dequantize())
    prompt = [[1, 5, 9, 33, 7]]
    a, b = generate(q, prompt, max_new_tokens=8)[0], generate(f, prompt, max_new_tokens=8)[0]
    assert sum(x == y for x, y in zip(a, b)) >= 6  # bfloat16 activations vs float32 on a random model


def test_bad_directory_input_is_one_line_exit_2(f32_gguf, tmp_path, capsys):
    out = tmp_path / "x"
    cases = [
        (["--group-size", "48"], "--group-size must be one of 32, 64, 128, got 48"),
        (["--group-size", "128"], "--group-size 128 does not divide the width 64"),
        (["--symmetric"], "--symmetric (Q4_0) applies to .gguf output only"),
    ]
    for extra, message in cases:
        assert main(["quantize", "--model", str(f32_gguf), "--bits", "4", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not out.exists()
    assert main(["quantize", "--model", str(f32_gguf), "--bits", "4", "--out", str(out)]) == 0
    assert main(["quantize", "--model", str(out), "--bits", "4", "--out", str(tmp_path / "y")]) == 2
    assert "already quantized" in capsys.readouterr().err


def test_smollm2_4bit_group32_directory_perplexity_within_5_percent(smollm2_gguf, tmp_path, capsys):
    from importlib import resources
    import lzma

    with lzma.open(resources.files("llamalab.data.corpus") / "prose.jsonl.xz", "rt") as f:
        text = json.loads(f.readline())["text"][:1800]  # ~400 tokens, as in test_perplexity
    f32 = tmp_path / "smol-f32.gguf"
    assert main(["convert", str(smollm2_gguf), "--to", "gguf", "--out", str(f32)]) == 0
    out = tmp_path / "smol-q4g32"
    assert main(["quantize", "--model", str(f32), "--bits", "4", "--group-size", "32", "--out", str(out)]) == 0
    capsys.readouterr()
    ref = llamalab.load(f32, dtype=torch.float32)
    ids = ref.tokenizer.encode(text, bos=ref.tokenizer.add_bos)
    base = perplexity(ref.model, ids, context=128, stride=64, progress=False).perplexity
    del ref
    q = llamalab.load(out, dtype=None)
    assert isinstance(q.model.layers[0].feed_forward.w1, QuantLinear)
    assert q.tokenizer.encode(text, bos=q.tokenizer.add_bos) == ids
    got = perplexity(q.model, ids, context=128, stride=64, progress=False).perplexity
    print(f"SmolLM2 perplexity fp32 {base:.4f}, 4-bit group-32 directory {got:.4f} ({got / base - 1:+.2%})")
    assert abs(got / base - 1) < 0.05
