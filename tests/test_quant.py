"""Weight-only quantization: GGUF block decoding against the `gguf` package, the CPU kernels against a
float matmul of the same codes, `llamalab quantize` output read back by `gguf`'s reader, resident memory
of the quantized SmolLM2, and bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import llamalab
from llamalab.cli import main
from llamalab.config import ModelArgs
from llamalab.formats import save
from llamalab.generate import generate
from llamalab.quant import QuantLinear, from_gguf, quantize
from tiny import random_state

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=64,
                 tie_embeddings=True)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_blocks_decode_like_the_gguf_package(kind):
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize as gguf_quantize

    w = np.random.default_rng(0).standard_normal((128, 96)).astype(np.float32)
    blocks = gguf_quantize(w, Q[kind])
    codes = from_gguf(blocks, kind, w.shape)
    assert torch.equal(codes.dequantize(), torch.from_numpy(dequantize(blocks, Q[kind])))  # bit-exact
    x = torch.randn(5, 96)
    ref = x @ codes.dequantize().t()
    lin = QuantLinear(codes)
    assert lin.kernel  # the int4 CPU kernel, not the fallback
    # bfloat16 activations and scales: within bfloat16 precision of the float product
    assert (lin(x) - ref).abs().max() <= 0.02 * ref.abs().max()
    rows = torch.tensor([[3, 64, 127]])  # embedding rows straight from the packed layout
    assert torch.allclose(lin.rows(rows), codes.dequantize()[rows], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("bits", [8, 4])
def test_round_to_nearest_error_is_within_half_a_step(bits):
    w = torch.randn(64, 128)
    c = quantize(w, bits, 32)
    step = c.scale.float().repeat_interleave(32, 1)
    assert ((c.dequantize() - w).abs() <= 0.5 * step + 1e-3).float().mean() > 0.99  # float16 scale/zero rounding
    assert ((c.dequantize() - w).abs() <= 0.6 * step).all()


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny-f32.gguf"
    return save(random_state(ARGS), ARGS, out, "gguf", gguf_type="f32")


@pytest.mark.parametrize("bits, kind", [(8, "Q8_0"), (4, "Q4_1")])
def test_quantize_writes_blocks_that_gguf_reads_back(f32_gguf, tmp_path, bits, kind):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader
    from gguf.quants import quantize as gguf_quantize

    out = tmp_path / f"q{bits}.gguf"
    assert main(["quantize", "--model", str(f32_gguf), "--bits", str(bits), "--out", str(out)]) == 0
    src = {t.name: np.array(t.data) for t in GGUFReader(f32_gguf).tensors}
    for t in GGUFReader(out).tensors:  # the same tensors, each the gguf package's blocks of the float weights
        want = "F32" if t.name.endswith("norm.weight") else "Q8_0" if t.name == "token_embd.weight" else kind
        assert t.tensor_type.name == want, t.name
        expected = src[t.name] if want == "F32" else gguf_quantize(src[t.name], Q[want])
        assert np.array_equal(np.array(t.data).reshape(expected.shape), expected), t.name
    # runs quantized, and greedy decoding follows the dequantized float model closely
    q = llamalab.load(out, dtype=None, tokenizer=False)
    f = llamalab.load(out, dtype=torch.float32, tokenizer=False)
    assert type(q.model.layers[0].attention.wq).__name__ == "QuantLinear"
    prompt = [[1, 5, 9, 33, 7]]
    a, b = generate(q.model, prompt, max_new_tokens=8)[0], generate(f.model, prompt, max_new_tokens=8)[0]
    assert sum(x == y for x, y in zip(a, b)) >= 6


def test_bad_input_is_one_line_exit_2(f32_gguf, smollm2_gguf, tmp_path, capsys):
    wide = ARGS.replace(dim=48, n_heads=4, n_kv_heads=2)  # rows of 48: not whole blocks of 32
    odd = save(random_state(wide), wide, tmp_path / "odd.gguf", "gguf", gguf_type="f32")
    cases = [
        (["quantize", "--model", str(f32_gguf), "--bits", "3", "--out", str(tmp_path / "x.gguf")], "--bits must be 8 or 4"),
        (["quantize", "--model", str(odd), "--bits", "8", "--out", str(tmp_path / "x.gguf")], "does not divide the width 48"),
        (["quantize", "--model", str(smollm2_gguf), "--bits", "8", "--out", str(tmp_path / "x.gguf")],
         "already quantized (Q4_1, Q8_0)"),
        (["quantize", "--model", str(f32_gguf), "--bits", "4", "--group-size", "64", "--out", str(tmp_path / "x.gguf")],
         "blocks of 32"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.gguf").exists()


RSS = """
import ctypes, gc, sys
import torch, llamalab
from gguf import GGUFReader
from llamalab.formats import load_state
path = sys.argv[1]
def anon():
    gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("RssAnon:"))
torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.zeros(64, 64, dtype=torch.int32), 1)
load_state(path, lazy=True)  # metadata parsing, kernels loaded: the baseline
before = anon()
model = llamalab.load(path, dtype=None, tokenizer=False).model
print(anon() - before, sum(t.n_bytes for t in GGUFReader(path).tensors))
"""


def test_quantized_smollm2_stays_small_in_memory(smollm2_gguf):
    # resident (anonymous) memory added by loading the Q4_1 file quantized, in a fresh process
    out = subprocess.run([sys.executable, "-c", RSS, str(smollm2_gguf)], capture_output=True, text=True, timeout=600)
    resident, file_bytes = map(int, out.stdout.split())
    assert resident <= 1.5 * file_bytes, (resident, file_bytes)  # fp32 would be ~5.6x
