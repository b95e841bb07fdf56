"""Weight-only quantization: GGUF block decoding against the `gguf` package, the CPU kernels against a
float matmul of the same codes (the int8 one against the `gguf` package's Q8_0 rounding of the activations,
which is llama.cpp's), the int8 kernel's build and its fallbacks, `llamalab quantize` output read back by
`gguf`'s reader, resident memory of the quantized SmolLM2, and bad input."""

import os
import platform
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
from llamalab.quant import GroupCodes, QuantLinear, cpu_kernel, from_gguf, quantize
from llamalab.quant.ggml import GEMM_ROWS
from tiny import random_state

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=64,
                 tie_embeddings=True)


def q8_product(x: torch.Tensor, codes: GroupCodes) -> torch.Tensor:
    """llama.cpp's Q8_0 × Q8_0 in float64: the activations as the gguf package rounds them to Q8_0 blocks."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize as gguf_quantize

    x8 = torch.from_numpy(dequantize(gguf_quantize(x.numpy(), Q.Q8_0), Q.Q8_0))
    return x8.double() @ codes.dequantize().double().t()


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_blocks_decode_like_the_gguf_package(kind):
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize as gguf_quantize

    w = np.random.default_rng(0).standard_normal((128, 96)).astype(np.float32)
    blocks = gguf_quantize(w, Q[kind])
    codes = from_gguf(blocks, kind, w.shape)
    assert torch.equal(codes.dequantize(), torch.from_numpy(dequantize(blocks, Q[kind])))  # bit-exact
    x = torch.randn(5, 96)
    lin = QuantLinear(codes)
    if kind == "Q8_0" and cpu_kernel.available():  # llama.cpp's Q8_0 × Q8_0: activations rounded as gguf does
        assert lin.path == "int8"
        ref = q8_product(x, codes).float()
        assert torch.allclose(lin(x), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    else:  # PyTorch's int4 route, bfloat16 activations and scales: within bfloat16 precision of the product
        assert lin.path == "int4pack"
        ref = x @ codes.dequantize().t()
        assert (lin(x) - ref).abs().max() <= 0.02 * ref.abs().max()
    rows = torch.tensor([[3, 64, 127]])  # embedding rows straight from the layer's layout
    assert torch.allclose(lin.rows(rows), codes.dequantize()[rows], rtol=1e-2, atol=1e-2)


NEEDS_KERNEL = pytest.mark.skipif(not cpu_kernel.cxx_compiler(), reason="the int8 kernel is built with a C++ compiler")


@NEEDS_KERNEL
@pytest.mark.parametrize("shape, group", [((200, 576), 32), ((6, 256), 64), ((130, 1536), 128)])
def test_int8_kernel_against_its_definition(shape, group):
    """Every row block and tail (200 = 50 blocks of 4; 6 and 130 leave tails), group sizes above the block;
    a batch row's result equals the same row alone (decoding batched = one by one), bit for bit."""
    codes = quantize(torch.randn(shape), 8, group)
    lin = QuantLinear(codes)
    assert lin.path == "int8"
    x = torch.randn(7, shape[1]) * torch.logspace(-3, 2, 7)[:, None]  # block scales far apart
    x[3, :32] = 0  # an all-zero block: d = 0
    ref = q8_product(x, codes)
    y = lin(x)
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-6 * ref.abs().amax(1, keepdim=True).max().item())
    assert all(torch.equal(lin(x[i:i + 1]), y[i:i + 1]) for i in range(7))
    xb = x.bfloat16()  # other dtypes and shapes: computed in float32, returned in the input's dtype
    assert torch.equal(lin(xb.view(7, 1, -1)), lin(xb.float()).bfloat16().view(7, 1, -1))
    x[2, 40], x[4, 3] = float("nan"), float("inf")  # non-finite activations spread as in a float product
    assert lin(x)[[2, 4]].isnan().all() and not lin(x)[[0, 1, 3, 5, 6]].isnan().any()


@NEEDS_KERNEL
def test_int8_prefill_is_a_bfloat16_gemm_of_the_codes():
    """From GEMM_ROWS rows on (prefill): tiles of q · scale rounded to bfloat16 (exactly, against the identity)
    and a bfloat16 GEMM, within bfloat16's rounding of the float64 product."""
    codes = quantize(torch.randn(200, 576), 8, 32)
    lin = QuantLinear(codes)
    w = codes.dequantize()
    assert torch.equal(lin(torch.eye(576)), w.bfloat16().float().T)
    x = torch.randn(GEMM_ROWS, 576)
    exact = x.double() @ w.double().T
    assert (lin(x).double() - exact).abs().max() <= 1e-2 * exact.abs().max()


@NEEDS_KERNEL
def test_int8_codes_the_kernel_cannot_take_go_through_the_int4_route(monkeypatch):
    codes = quantize(torch.randn(64, 128), 8, 32)
    x = torch.randn(3, 128)
    q, zero = codes.q.clone(), codes.zero.clone()
    q[5, 7] = -128  # the kernel's sign trick cannot negate it
    zero[2, 1] = 0.5  # an asymmetric int8 layout
    for c in (GroupCodes(q, codes.scale, codes.zero, 8, 32), GroupCodes(codes.q, codes.scale, zero, 8, 32)):
        lin = QuantLinear(c)
        assert lin.path == "int4pack"
        ref = x @ c.dequantize().t()
        assert (lin(x) - ref).abs().max() <= 0.02 * ref.abs().max()
    monkeypatch.setattr(cpu_kernel, "available", lambda: False)  # no compiler: the int4 route (bfloat16 scales)
    lin = QuantLinear(codes)
    assert lin.path == "int4pack" and torch.allclose(lin.dequantize(), codes.dequantize(), rtol=1e-2, atol=1e-2)


VARIANT = """
import sys, torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize as gguf_quantize
from llamalab.device import cxx_compiler
from llamalab.quant import cpu_kernel, quantize
cpu_kernel.SOURCES = [p for p in cpu_kernel.SOURCES if p.name == "int8_linear.cpp"]  # the source under test
torch.ops.load_library(cpu_kernel._build(cxx_compiler(), sys.argv[1]))
torch.manual_seed(0)
codes = quantize(torch.randn(130, 256), 8, 64)
x = torch.randn(5, 256) * torch.logspace(-2, 1, 5)[:, None]
y = torch.ops.llamalab.int8_linear(x, codes.q, codes.scale.float(), 64)
x8 = torch.from_numpy(dequantize(gguf_quantize(x.numpy(), Q.Q8_0), Q.Q8_0))
ref = x8.double() @ codes.dequantize().double().t()
rows = all(torch.equal(torch.ops.llamalab.int8_linear(x[i:i + 1].contiguous(), codes.q, codes.scale.float(), 64),
                       y[i:i + 1]) for i in range(5))
print(((y.double() - ref).abs().max() / ref.abs().max()).item(), rows)
"""


@pytest.mark.skipif(platform.machine() != "x86_64" or not cpu_kernel.cxx_compiler(),
                    reason="the instruction-set variants are x86's")
@pytest.mark.parametrize("march", ["x86-64", "haswell"])
def test_int8_kernel_variants_without_vnni(march, tmp_path):
    """The kernel's other code paths, built for older x86 CPUs: plain loops (x86-64: no AVX2) and AVX2
    without VNNI (haswell), each against the gguf package's Q8_0 product."""
    env = {**os.environ, "LLAMALAB_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", VARIANT, march], capture_output=True, text=True, timeout=600, env=env)
    error, rows = out.stdout.split()
    assert float(error) < 1e-5 and rows == "True", out.stderr


BUILD = """
import torch
from llamalab.quant import QuantLinear, cpu_kernel, quantize
cpu_kernel.SOURCES = [p for p in cpu_kernel.SOURCES if p.name == "int8_linear.cpp"]  # the op this script runs:
cpu_kernel.FAKES = {"int8_linear": cpu_kernel.FAKES["int8_linear"]}                # the build steps are the same
print(QuantLinear(quantize(torch.randn(64, 64), 8, 32)).path, len(list(cpu_kernel._cache_dir().glob("*.so"))))
"""


@NEEDS_KERNEL
def test_int8_kernel_builds_once_and_falls_back_without_a_compiler(tmp_path):
    env = {**os.environ, "LLAMALAB_CACHE": str(tmp_path)}
    run = lambda **extra: subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True,
                                         timeout=600, env={**env, **extra})
    first, again = run(), run()
    assert first.stdout.split() == ["int8", "1"] and "compiling" in first.stderr, first.stderr
    assert again.stdout.split() == ["int8", "1"] and again.stderr == ""  # from the cache
    assert not list((tmp_path / "kernels").glob("*.tmp"))
    broken = run(LLAMALAB_CACHE=str(tmp_path / "other"), CXX="/bin/false")
    assert broken.stdout.split() == ["int4pack", "0"]
    notice = broken.stderr.splitlines()  # the build announced, then why it failed and what runs instead
    assert len(notice) == 2 and "could not build the CPU kernel" in notice[1] and "false exited" in notice[1], notice


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
def rss(kind="RssAnon:"):
    gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(kind))
torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.zeros(64, 64, dtype=torch.int32), 1)
load_state(path, lazy=True)  # metadata parsing, kernels loaded: the baseline
before, mapped = rss(), rss("RssFile:")
model = llamalab.load(path, dtype=None, tokenizer=False).model
print(rss() - before, rss("RssFile:") - mapped, sum(t.n_bytes for t in GGUFReader(path).tensors))
"""


def test_quantized_smollm2_stays_small_in_memory(smollm2_gguf):
    # resident (anonymous) memory added by loading the Q4_1 file quantized, in a fresh process
    out = subprocess.run([sys.executable, "-c", RSS, str(smollm2_gguf)], capture_output=True, text=True, timeout=600)
    resident, mapped, file_bytes = map(int, out.stdout.split())
    assert resident <= 1.5 * file_bytes, (resident, file_bytes)  # fp32 would be ~5.6x
    # the file is mapped, but the pages of its converted tensors (Q4_1, Q8_0: all of them) are handed back
    assert mapped <= 0.25 * file_bytes, (mapped, file_bytes)  # ~7%: the header and vocabulary; unreleased ~100%
