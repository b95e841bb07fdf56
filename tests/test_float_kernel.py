"""The float matrix-vector kernel (`quant/float_linear.cpp`) and the layers that route projections through it.

Reference: torch's float64 matmul of the same weights (a 16-bit weight widens to float64 exactly, and so does
every product of a float32 activation with it). The kernel accumulates K products in float32, so any correct
order of summation is within γ_K · Σ|x·w| of the exact value, γ_K = K·u / (1 - K·u), u = 2⁻²⁴ (Higham's bound
for a sum of K terms); a lost tail, a wrong row or a wrong widening breaks it by orders of magnitude.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import llamalab
from llamalab import formats
from llamalab.config import ModelArgs
from llamalab.quant import FloatEmbedding, FloatLinear, cpu_kernel, route
from tiny import random_state

pytestmark = pytest.mark.skipif(not cpu_kernel.cxx_compiler(), reason="the kernel is built with a C++ compiler")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
U = 2.0 ** -24
ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32, max_seq_len=64,
                 norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=True)


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert cpu_kernel.available()  # builds and loads torch.ops.llamalab


def check(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> None:
    K = x.shape[1]
    exact = x.double() @ w.double().T
    gamma = K * U / (1 - K * U)
    bound = gamma * (x.double().abs() @ w.double().abs().T)
    assert y.dtype == torch.float32 and y.shape == exact.shape
    assert ((y.double() - exact).abs() <= bound).all(), ((y.double() - exact).abs() / bound).max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, N, K", [(1, 13, 37), (1, 64, 576), (3, 7, 1000), (5, 66, 129), (40, 300, 77)])
def test_matches_float64_reference(dtype, M, N, K):
    """K not a multiple of the vector width (37, 129, 77), N not a multiple of the row block (13, 7, 66),
    one activation row, a few (the kernel), many (40: the GEMM)."""
    g = torch.Generator().manual_seed(M * N + K)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g).to(dtype)
    check(x, w, torch.ops.llamalab.float_linear(x, w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemm_widens_a_16bit_weight_tile_by_tile(dtype):
    """A 16-bit matrix of more than one widening tile (8 Mi weights) under the GEMM (many rows)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(33, 4096, generator=g), torch.randn(2100, 4096, generator=g).to(dtype)
    check(x, w, torch.ops.llamalab.float_linear(x, w))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_batch_row_equals_the_row_alone(dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(67, 203, generator=g).to(dtype)
    for M in (2, 3, 5, 9):
        x = torch.randn(M, 203, generator=g)
        y = torch.ops.llamalab.float_linear(x, w)
        assert all(torch.equal(y[i], torch.ops.llamalab.float_linear(x[i:i + 1].clone(), w)[0]) for i in range(M))


def test_float_linear_layer_trains_through_torch():
    """With a gradient wanted, the layer is F.linear: the same output and gradients."""
    w = nn.Parameter(torch.randn(9, 31))
    x = torch.randn(2, 3, 31, requires_grad=True)
    layer = FloatLinear(w)
    layer(x).square().sum().backward()
    gw, gx = w.grad.clone(), x.grad.clone()
    w.grad = x.grad = None
    F.linear(x, w).square().sum().backward()
    assert torch.equal(gw, w.grad) and torch.equal(gx, x.grad)
    with torch.no_grad():
        check(x.detach().flatten(0, 1), w.detach(), layer(x).flatten(0, 1))


@pytest.fixture(scope="module")
def f16_gguf(tmp_path_factory):
    state = random_state(ARGS, seed=3)
    return formats.save(state, ARGS, tmp_path_factory.mktemp("f16") / "m.gguf", "gguf", gguf_type="f16")


def test_a_float16_checkpoint_stays_16bit_and_matches_float64(f16_gguf):
    model = llamalab.load(f16_gguf, dtype=None, tokenizer=False).model
    wq = model.layers[0].attention.wq
    assert isinstance(wq, FloatLinear) and wq.weight.dtype == torch.float16
    assert isinstance(model.tok_embeddings, FloatEmbedding) and model.output.weight is model.tok_embeddings.weight
    assert model.norm.weight.dtype == torch.float32
    reference = llamalab.load(f16_gguf, dtype=torch.float64, tokenizer=False).model  # torch's float64 math
    tokens = torch.tensor([[5, 17, 3, 90, 41, 8, 0, 77]])
    with torch.no_grad():
        logits, ref = model(tokens), reference(tokens)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), ref, rtol=0, atol=1e-5 * ref.abs().max().item())


def test_switched_off_keeps_torch_matmul_and_float32(f16_gguf, monkeypatch):
    monkeypatch.setenv("LLAMALAB_FLOAT_KERNEL", "0")
    model = llamalab.load(f16_gguf, dtype=None, tokenizer=False).model
    wq = model.layers[0].attention.wq
    assert type(wq) is nn.Linear and wq.weight.dtype == torch.float32
    assert route(model) == 0


def test_route_is_idempotent_and_keeps_ties():
    model = llamalab.formats.model_from_state(random_state(ARGS, seed=4), ARGS)
    assert route(model) == 7 * ARGS.n_layers + 1 and route(model) == 0
    assert model.output.weight is model.tok_embeddings.weight
