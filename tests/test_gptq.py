"""GPTQ: the algorithm on random matrices (its layer output error below round-to-nearest's; the lazy batch
updates equal the paper's column-by-column update written out here), checkpoints in the GPTQ layout built
here from AutoGPTQ's documented packing (not our writer) read onto our codes with logits equal to
transformers' on the dequantized weights, `llamalab quantize --method gptq` end to end, and bad input.

No independent GPTQ implementation runs here (auto-gptq 0.7.1 does not import with this transformers;
gptqmodel needs CUDA torch), so the layout is constructed in `autogptq_pack` from AutoGPTQ's
`QuantLinear.pack` loop and `checkpoint_format` "gptq" (zeros stored minus one)."""

import copy
import json
import lzma
from importlib import resources

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import llamalab
from llamalab.cli import main
from llamalab.config import ModelArgs
from llamalab.errors import LlamalabError
from llamalab.formats import load_state, save
from llamalab.formats.hf import config_from_args
from llamalab.perplexity import perplexity
from llamalab.quant import GroupCodes, QuantLinear
from llamalab.calibrate import calibration_samples, calibration_text, gptq_checkpoint
from llamalab.quant.gptq import Hessian, gptq, grid, round_to_nearest
from llamalab.quant.gptq_model import gptq_codes
from llamalab.tokenizer import load_tokenizer
from tiny import random_state


def correlated_inputs(n: int, width: int, seed: int = 0) -> torch.Tensor:
    """Activations like a transformer's: correlated channels, a few of them large (outliers)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(width) + torch.randn(width, width, generator=g) / width ** 0.5
    scale = 1 + 5 * (torch.rand(width, generator=g) < 0.03)
    return torch.randn(n, width, generator=g) @ mix * scale


@pytest.mark.parametrize("bits, group, sym, act_order", [(4, 128, False, False), (4, 128, False, True),
                                                         (4, 32, True, False), (3, 64, False, True),
                                                         (8, 128, True, True)])
def test_gptq_layer_error_below_round_to_nearest(bits, group, sym, act_order):
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(1))
    X = correlated_inputs(1024, 256)
    h = Hessian(256)
    for part in X.split(300):  # a running mean over batches is the Hessian of them all
        h.add(part)
    assert torch.allclose(h.H, 2 * X.t() @ X / len(X), rtol=1e-4, atol=1e-3)
    g = gptq(w, h.H, bits=bits, group_size=group, sym=sym, act_order=act_order)
    r = round_to_nearest(w, bits=bits, group_size=group, sym=sym)
    err_gptq, err_rtn = (X @ (g.dequantize() - w).t()).norm(), (X @ (r.dequantize() - w).t()).norm()
    assert err_gptq < 0.9 * err_rtn, (err_gptq, err_rtn)
    # codes within the grid: 0 .. 2^bits - 1 as GPTQ keeps them, and act-order permutes whole columns
    assert (g.perm is not None) == act_order
    step = r.scale.float().repeat_interleave(group, 1)
    assert ((r.dequantize() - w).abs() <= 0.5 * step + 1e-6).float().mean() > 0.98  # RTN: half a step (but clipping)


def test_static_groups_keep_round_to_nearest_grids():
    """AutoGPTQ's static_groups: every group's grid from the weights before any update, so the scales and
    zeros are round to nearest's, while the error feedback still lowers the layer's output error."""
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    X = correlated_inputs(512, 256)
    g = gptq(w, 2 * X.t() @ X / len(X), group_size=64, static_groups=True)
    r = round_to_nearest(w, group_size=64)
    assert torch.equal(g.scale, r.scale) and torch.equal(g.zero, r.zero)
    assert (X @ (g.dequantize() - w).t()).norm() < 0.9 * (X @ (r.dequantize() - w).t()).norm()


@pytest.mark.parametrize("sym", [False, True])
def test_mse_grid_rounds_closer_than_min_max(sym):
    """GPTQ's `mse` grid: the range shrunk where that rounds a row with less Σ|error|^2.4 — never more
    than min/max (p = 1 is among the candidates), less on most rows."""
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(3))
    w[::2, 5] *= 8  # an outlier in every other row stretches min/max's range

    def error(scale, zero):
        q = (torch.round(w / scale[:, None]) + zero[:, None]).clamp(0, 15)
        return ((q - zero[:, None]) * scale[:, None] - w).abs().pow(2.4).sum(1)

    plain, mse = error(*grid(w, 4, sym)), error(*grid(w, 4, sym, mse=True))
    assert (mse <= plain * (1 + 1e-5)).all()
    assert (mse < 0.99 * plain).float().mean() > 0.5 and mse.sum() < 0.95 * plain.sum(), mse / plain


def column_by_column(w, H, bits, group, damp=0.01):
    """The paper's update (eq. 2-3 with the Cholesky reformulation), one column at a time over the whole
    matrix: no lazy batches. Each group's grid is chosen when its first column comes up."""
    W, H = w.clone(), H.clone()
    H.diagonal().add_(damp * H.diagonal().mean())
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for j in range(W.shape[1]):
        if j % group == 0:
            scale, zero = grid(W[:, j:j + group], bits, False)
        q = (torch.round(W[:, j] / scale) + zero).clamp(0, 2 ** bits - 1)
        Q[:, j] = (q - zero) * scale
        W[:, j:] -= ((W[:, j] - Q[:, j]) / U[j, j])[:, None] * U[j, j:][None]
    return Q


def test_lazy_batch_updates_equal_column_by_column():
    w = torch.randn(64, 384, generator=torch.Generator().manual_seed(2))
    X = correlated_inputs(512, 384, seed=3)
    H = 2 * X.t() @ X / len(X)
    got = gptq(w, H, bits=4, group_size=64).dequantize()
    want = column_by_column(w, H, 4, 64)
    assert (got - want).abs().max() < 1e-3 * w.abs().max()


# ------------------------------------------------------------------ the GPTQ layout, packed as AutoGPTQ packs it

def autogptq_pack(intweight: np.ndarray, zeros: np.ndarray, bits: int):
    """AutoGPTQ's `QuantLinear.pack` (qlinear_cuda_old, bits 2/4/8): intweight (in, out), zeros (groups, out)
    → qweight (in·bits/32, out), qzeros (groups, out·bits/32), int32; zeros stored minus one."""
    intweight = intweight.astype(np.uint32)
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i, row = 0, 0
    while row < qweight.shape[0]:
        for j in range(i, i + 32 // bits):
            qweight[row] |= intweight[j] << (bits * (j - i))
        i += 32 // bits
        row += 1
    zeros = ((zeros - 1) & (2 ** bits - 1)).astype(np.uint32)
    qzeros = np.zeros((zeros.shape[0], zeros.shape[1] // 32 * bits), dtype=np.uint32)
    i, col = 0, 0
    while col < qzeros.shape[1]:
        for j in range(i, i + 32 // bits):
            qzeros[:, col] |= zeros[:, j] << (bits * (j - i))
        i += 32 // bits
        col += 1
    return torch.from_numpy(qweight.view(np.int32)), torch.from_numpy(qzeros.view(np.int32))


HF_ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32, max_seq_len=64)
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def gptq_checkpoint_by_hand(out, bits: int, sym: bool, g_idx_kind: str, group: int = 32, seed: int = 0):
    """A transformers LLaMA whose projections are random GPTQ codes, written in the GPTQ layout; returns the
    transformers model holding the dequantized weights W = scales[g_idx] · (q − zeros[g_idx])."""
    from transformers import LlamaConfig, LlamaForCausalLM

    gen = torch.Generator().manual_seed(seed)
    cfg = config_from_args(HF_ARGS, torch.float32)
    torch.manual_seed(seed)  # the float parts (embeddings, norms) too: one checkpoint per argument set
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    tensors = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    for i in range(HF_ARGS.n_layers):
        for proj in PROJECTIONS:
            name = f"model.layers.{i}.{proj}"
            out_f, in_f = tensors.pop(f"{name}.weight").shape
            size = in_f if group == -1 else group  # -1: one group per row
            groups = in_f // size
            if g_idx_kind == "plain":
                g_idx = torch.arange(in_f) // size
            elif g_idx_kind == "act-order":  # AutoGPTQ's desc_act: g_idx[perm[i]] = i // group
                perm = torch.randperm(in_f, generator=gen)
                g_idx = torch.empty(in_f, dtype=torch.long)
                g_idx[perm] = torch.arange(in_f) // size
            else:  # groups of unequal sizes: no contiguous reordering exists
                g_idx = torch.randint(0, groups, (in_f,), generator=gen)
            q = torch.randint(0, 2 ** bits, (in_f, out_f), generator=gen)
            z = torch.full((groups, out_f), 2 ** (bits - 1)) if sym else \
                torch.randint(0, 2 ** bits, (groups, out_f), generator=gen)
            scales = (torch.rand(groups, out_f, generator=gen) * 0.02 + 0.001).half()
            w = scales.float()[g_idx] * (q - z[g_idx]).float()  # (in, out)
            model.get_submodule(name).weight.data = w.t().contiguous()
            qweight, qzeros = autogptq_pack(q.numpy(), z.numpy(), bits)
            tensors |= {f"{name}.qweight": qweight, f"{name}.qzeros": qzeros, f"{name}.scales": scales,
                        f"{name}.g_idx": g_idx.to(torch.int32)}
    out.mkdir()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    qcfg = {"bits": bits, "group_size": group, "desc_act": g_idx_kind != "plain", "sym": sym,
            "quant_method": "gptq", "checkpoint_format": "gptq"}
    (out / "config.json").write_text(json.dumps(cfg | {"quantization_config": qcfg}))
    return model


@pytest.mark.parametrize("bits, sym, g_idx_kind, group", [(4, True, "plain", 32), (4, False, "act-order", 32),
                                                          (8, True, "act-order", 32), (8, False, "plain", 32),
                                                          (4, False, "irregular", 32), (4, False, "plain", -1)])
def test_gptq_checkpoint_loads_onto_codes(tmp_path, bits, sym, g_idx_kind, group):
    reference = gptq_checkpoint_by_hand(tmp_path / "ckpt", bits, sym, g_idx_kind, group)
    tokens = torch.tensor([[1, 17, 200, 45, 3, 99, 250, 8]])
    with torch.no_grad():
        want = reference(tokens).logits
        dequantized = llamalab.load(tmp_path / "ckpt", dtype=torch.float32, tokenizer=False).model
        assert (dequantized(tokens) - want).abs().max() < 1e-4
        quantized = llamalab.load(tmp_path / "ckpt", dtype=None, tokenizer=False).model
        got = quantized(tokens)
    wv, w2 = quantized.layers[1].attention.wv, quantized.layers[0].feed_forward.w2
    if g_idx_kind == "irregular":  # no contiguous groups: that layer alone is float
        assert not isinstance(wv, QuantLinear)
    else:
        assert isinstance(wv, QuantLinear) and wv.bits == bits and (wv.perm is not None) == (g_idx_kind == "act-order")
        hf_w = reference.model.layers[1].self_attn.v_proj.weight
        assert torch.equal(wv.dequantize(), hf_w) or (wv.dequantize() - hf_w).abs().max() < 1e-6
        # bfloat16 activations: bounded by what transformers itself drifts when it runs these weights in bfloat16
        with torch.no_grad():
            drift = (copy.deepcopy(reference).to(torch.bfloat16)(tokens).logits.float() - want).norm()
        assert (got - want).norm() < 2 * drift + 0.01 * want.norm(), ((got - want).norm() / want.norm(), drift)
    # the int4 kernel's layout holds scales and zeros in bfloat16: its weights within that rounding
    want_w2 = reference.model.layers[0].mlp.down_proj.weight
    got_w2 = w2.dequantize() if isinstance(w2, QuantLinear) else w2.weight
    assert (got_w2 - want_w2).abs().max() <= 0.02 * want_w2.abs().max()


def test_info_describes_a_gptq_checkpoint_and_convert_writes_gguf(tmp_path, capsys):
    reference = gptq_checkpoint_by_hand(tmp_path / "ckpt", 4, False, "act-order")
    assert main(["info", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "GPTQ 4-bit, group 32, asymmetric (zero points), act-order (desc_act, g_idx)" in out
    assert "layers.0.attention.wq.weight     (64, 64)         gptq int4 (group 32, act-order)" in out
    gguf = tmp_path / "m.gguf"  # convert: the dequantized weights, as float32 GGUF
    assert main(["convert", str(tmp_path / "ckpt"), "--to", "gguf", "--out", str(gguf)]) == 0
    tokens = torch.tensor([[1, 17, 200, 45, 3]])
    with torch.no_grad():
        got = llamalab.load(gguf, dtype=torch.float32, tokenizer=False).model(tokens)
        assert (got - reference(tokens).logits).abs().max() < 1e-4


# ------------------------------------------------------------------------------ `llamalab quantize --method gptq`

TINY = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=49152, multiple_of=32, max_seq_len=128,
                 tie_embeddings=True)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, smollm2_gguf):
    """A random tiny model with SmolLM2's tokenizer (calibration text has to be encoded)."""
    out = tmp_path_factory.mktemp("gptq") / "tiny"
    return save(random_state(TINY), TINY, out, "hf", tokenizer_src=load_tokenizer(smollm2_gguf))


def autogptq_unpack_weight(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """AutoGPTQ's torch dequantization shifts (2/4/8 bits): qweight (in·bits/32, out) → codes (in, out)."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    q = torch.bitwise_right_shift(qweight[:, None, :], shifts[None, :, None]) & (2 ** bits - 1)
    return q.reshape(-1, qweight.shape[1])


@pytest.mark.parametrize("extra", [[], ["--act-order", "--sym", "--damp", "0.05", "--mse"]])
def test_quantize_gptq_writes_the_layout(tiny_hf, tmp_path, capsys, extra):
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(tiny_hf), "--method", "gptq", "--bits", "4", "--group-size", "32",
                 "--calibration", str(text), "--samples", "4", "--seq-len", "64", "--out", str(out), *extra]) == 0
    assert "s, peak memory" in capsys.readouterr().out  # the time and memory quantizing took, reported
    qcfg = json.loads((out / "quantize_config.json").read_text())
    assert qcfg["bits"] == 4 and qcfg["group_size"] == 32 and qcfg["desc_act"] == bool(extra)
    assert qcfg["damp_percent"] == (0.05 if extra else 0.01)
    assert qcfg["sym"] == bool(extra) and json.loads((out / "config.json").read_text())["quantization_config"] == qcfg
    tensors = load_file(out / "model.safetensors")
    name = "model.layers.1.mlp.down_proj"
    q = autogptq_unpack_weight(tensors[f"{name}.qweight"], 4)  # (in, out)
    z = (autogptq_unpack_weight(tensors[f"{name}.qzeros"].t().contiguous(), 4).t() + 1) & 15  # (groups, out)
    g = tensors[f"{name}.g_idx"].long()
    if extra:
        assert (z == 8).all() and not torch.equal(g, torch.arange(len(g)) // 32)
    w = tensors[f"{name}.scales"].float()[g] * (q - z[g]).float()
    codes = load_state(out, quantized=True)[0]["layers.1.feed_forward.w2.weight"]  # read back as codes
    assert isinstance(codes, GroupCodes) and (codes.perm is not None) == bool(extra)
    assert torch.equal(codes.dequantize(), w.t())
    assert isinstance(llamalab.load(out, dtype=None).model.layers[1].feed_forward.w2, QuantLinear)
    assert tensors["model.embed_tokens.weight"].dtype == torch.float16


def test_bad_gptq_input_is_one_line_exit_2(tiny_hf, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    common = ["quantize", "--model", str(tiny_hf), "--method", "gptq", "--bits", "4", "--out", str(tmp_path / "x")]
    odd = save(random_state(TINY.replace(dim=48)), TINY.replace(dim=48), tmp_path / "odd", "hf")
    cases = [
        (common + ["--calibration", str(short), "--seq-len", "64"], "is 3 tokens, shorter than one sample of --seq-len 64"),
        (common + ["--seq-len", "512"], "--seq-len 512 is longer than the model's context of 128"),
        (common + ["--group-size", "48"], "--group-size must be one of 32, 64, 128, got 48"),
        (["quantize", "--model", str(odd), "--method", "gptq", "--bits", "4", "--out", str(tmp_path / "x")],
         "--group-size 128 cannot split layers.0.feed_forward.w2.weight, a 48x128 weight"),
        (common + ["--bits", "5"], "--bits must be one of 3, 4, 8 for GPTQ, got 5"),
        (["quantize", "--model", str(tiny_hf), "--bits", "4", "--act-order", "--out", str(tmp_path / "x")],
         "--act-order applies to --method gptq only"),
    ]
    ckpt = tmp_path / "ckpt"
    gptq_checkpoint_by_hand(ckpt, 4, False, "act-order")
    tensors = load_file(ckpt / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj"
    for part, value, message in [("qzeros", tensors[f"{name}.qzeros"][:, :-1].contiguous(), "do not fit together"),
                                 ("g_idx", tensors[f"{name}.g_idx"] + 1, "g_idx holds group 2 outside 0..1")]:
        bad = tmp_path / f"bad-{part}"
        bad.mkdir()
        (bad / "config.json").write_text((ckpt / "config.json").read_text())
        save_file(tensors | {f"{name}.{part}": value}, bad / "model.safetensors")
        cases.append((["convert", str(bad), "--to", "gguf", "--out", str(tmp_path / "x.gguf")], message))
    bad = tmp_path / "bad-config"
    bad.mkdir()
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["quantization_config"]["group_size"] = "32"
    (bad / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, bad / "model.safetensors")
    cases.append((["info", str(bad)], "GPTQ group_size '32' is not a positive integer or -1"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.gguf").exists()


def test_smollm2_gptq_recovers_round_to_nearest_loss(smollm2_fp32):
    """The real model, in memory (fake-quantized float weights, float32 activations): GPTQ 4-bit group 128
    (a few calibration windows of the demo prose) against the same grid rounded to nearest, perplexity on the
    held-out first prose document."""
    with lzma.open(resources.files("llamalab.data.corpus") / "prose.jsonl.xz", "rt") as f:
        held_out = json.loads(f.readline())["text"][:1800]  # ~400 tokens; never in the calibration windows
    ckpt = smollm2_fp32
    ids = ckpt.tokenizer.encode(held_out)
    calibration = calibration_text("corpus", chars=40_000)
    assert held_out[:200] not in calibration
    samples = calibration_samples(ckpt.tokenizer.encode(calibration), 16, 128)
    ppl = {"fp32": perplexity(ckpt.model, ids, context=128, stride=64, progress=False).perplexity}
    for method in ("rtn", "gptq"):
        model = copy.deepcopy(ckpt.model)  # the same float32 weights as a fresh load, without dequantizing again
        gptq_codes(model, samples, bits=4, group_size=128, method=method, progress=False)
        ppl[method] = perplexity(model, ids, context=128, stride=64, progress=False).perplexity
    print(ppl)
    assert ppl["gptq"] - ppl["fp32"] < 0.75 * (ppl["rtn"] - ppl["fp32"]), ppl


@pytest.mark.parametrize("sym, kind", [(False, "Q4_1"), (True, "Q4_0")])
def test_quantize_gptq_to_gguf_blocks(tiny_hf, tmp_path, sym, kind):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    text = tmp_path / "calib.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 60)
    argv = ["quantize", "--model", str(tiny_hf), "--method", "gptq", "--bits", "4", "--group-size", "32",
            "--calibration", str(text), "--samples", "4", "--seq-len", "64"] + (["--sym"] if sym else [])
    assert main(argv + ["--out", str(tmp_path / "q.gguf")]) == 0
    assert main(argv + ["--out", str(tmp_path / "q")]) == 0  # the same GPTQ run, in the GPTQ layout
    codes = load_state(tmp_path / "q", quantized=True)[0]
    tensors = {t.name: t for t in GGUFReader(tmp_path / "q.gguf").tensors}
    assert tensors["token_embd.weight"].tensor_type.name == "Q8_0"
    for ours, name in [("layers.0.attention.wq.weight", "blk.0.attn_q.weight"),
                       ("layers.1.feed_forward.w2.weight", "blk.1.ffn_down.weight")]:
        t = tensors[name]
        assert t.tensor_type.name == kind
        got = torch.from_numpy(dequantize(t.data, t.tensor_type)).reshape(codes[ours].shape)
        want = codes[ours].dequantize()
        step = codes[ours].scale.float().repeat_interleave(32, 1)
        if sym:  # Q4_0 holds GPTQ's symmetric grid exactly
            assert torch.equal(got, want), ours
        else:  # Q4_1's minimum is float16: GPTQ's zero point rounded
            assert ((got - want).abs() <= 0.01 * step + 1e-7).all(), ours
    with pytest.raises(LlamalabError, match="GGUF output holds GPTQ's values only as"):
        gptq_checkpoint(tiny_hf, tmp_path / "x.gguf", bits=4, group_size=128)
