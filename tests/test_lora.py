"""LoRA math on small random models: the trainable count is the formula's for every target set, B = 0 starts
exactly at the base, a merged checkpoint equals base + adapter (fp32, ≤ 1e-5), attaching in memory equals
running unmerged, adapters round-trip through peft's layout (HF names, HF rotary rows), and an adapter for
another shape or with peft features we do not implement is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from llamalab.config import get_preset
from llamalab.errors import LlamalabError
from llamalab.formats.peft import load_adapter, save_adapter
from llamalab.formats.lora import (ALL, Dropout, LoraSpec, apply_lora, attach, count_trainable, expected_trainable,
                                    lora_init, merge_into_state, parse_targets)
from llamalab.formats import model_from_state
from llamalab.train import parallel
from tiny import random_state

ARGS = get_preset("tiny").replace(n_layers=3)  # dim 64, 4 heads / 2 KV heads (GQA), FFN 192


def lora_model(args, spec, state, seed=0, b_std=0.0):
    """Our model with LoRA layers as the fine-tuning run builds it; b_std > 0 draws B too (a trained adapter)."""
    model, _ = parallel.build_parallel_model(
        args, world=parallel.World(), parallel="none", activation_checkpointing=False, compile=False, bf16=False,
        full_tensor=lora_init(lambda name, shape, dtype: state[name], torch.Generator().manual_seed(seed)),
        adapt=lambda m: apply_lora(m, spec))
    if b_std:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lora_b.weight"):
                    p.copy_(torch.randn(p.shape, generator=g) * b_std)
    return model.eval()


def adapter_of(model, spec, args, tmp_path):
    state = parallel.full_state_dict(model, trainable_only=True)
    save_adapter(tmp_path / "adapter", state, spec, args)
    return load_adapter(tmp_path / "adapter", args)


TOKENS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("targets", ["q,k,v,o", "all", "w1", "q_proj,down"])
def test_trainable_count_is_the_formula(targets):
    spec = LoraSpec(rank=4, alpha=8, targets=parse_targets(targets))
    model = lora_model(ARGS, spec, random_state(ARGS))
    trainable, total = count_trainable(model)
    # by hand for dim 64, 4 heads of 16, 2 KV heads (k/v out = 32), FFN 192: r·(in + out) per layer
    by_hand = {"wq": 4 * (64 + 64), "wk": 4 * (64 + 32), "wv": 4 * (64 + 32), "wo": 4 * (64 + 64),
               "w1": 4 * (64 + 192), "w2": 4 * (192 + 64), "w3": 4 * (64 + 192)}
    assert trainable == expected_trainable(ARGS, spec) == 3 * sum(by_hand[t] for t in spec.targets)
    assert total - trainable == sum(v.numel() for v in random_state(ARGS).values())
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def test_zero_b_starts_exactly_at_the_base():
    state = random_state(ARGS)
    base = model_from_state(state, ARGS)
    model = lora_model(ARGS, LoraSpec(rank=8, alpha=16, targets=ALL), state)
    assert torch.equal(model(TOKENS), base(TOKENS))


@pytest.mark.parametrize("tied", [False, True])
def test_merged_checkpoint_equals_base_plus_adapter(tmp_path, tied):
    args = ARGS.replace(tie_embeddings=tied)
    state = random_state(args)
    spec = LoraSpec(rank=4, alpha=12, targets=ALL)
    model = lora_model(args, spec, state, b_std=0.05)
    want = model(TOKENS)
    adapter = adapter_of(model, spec, args, tmp_path)  # through the file: peft names and HF rotary rows
    merged = model_from_state(merge_into_state(state, adapter), args)
    assert (merged(TOKENS) - want).abs().max() <= 1e-5
    assert (model_from_state(state, args)(TOKENS) - want).abs().max() > 1e-2  # the adapter does change the model
    for merge in (True, False):
        attached = model_from_state({k: v.clone() for k, v in state.items()}, args)  # attach changes its weights
        attach(attached, adapter, merge=merge)
        assert (attached(TOKENS) - want).abs().max() <= 1e-5


def test_adapter_file_is_peft_layout(tmp_path):
    spec = LoraSpec(rank=4, alpha=8, dropout=0.1, targets=parse_targets("q,v"))
    model = lora_model(ARGS, spec, random_state(ARGS), b_std=0.1)
    save_adapter(tmp_path, parallel.full_state_dict(model, trainable_only=True), spec, ARGS, base="b")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
        b = f.get_tensor("base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight")
    assert keys[:2] == ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] and len(keys) == 12
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["target_modules"]) == ("LORA", 4, 8, ["q_proj", "v_proj"])
    # B's rows are in HF's rotary layout: row 1 of each head is our row 2 (the halves, not the pairs)
    ours = dict(model.named_parameters())["layers.1.attention.wq.lora_b.weight"].detach()
    assert torch.equal(b[1], ours[2]) and torch.equal(b[8], ours[1])


def test_adapter_for_another_shape_and_unsupported_features_are_refused(tmp_path):
    spec = LoraSpec(rank=4, alpha=8)
    model = lora_model(ARGS, spec, random_state(ARGS))
    save_adapter(tmp_path, parallel.full_state_dict(model, trainable_only=True), spec, ARGS)
    with pytest.raises(LlamalabError, match=r"trained on a model of another shape"):
        load_adapter(tmp_path, ARGS.replace(dim=128, n_heads=8, n_kv_heads=4))
    with pytest.raises(LlamalabError, match=r"layers.3.attention.w. has .* layer is absent"):
        _more_layers(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    for key, value in (("use_dora", True), ("bias", "all"), ("modules_to_save", ["lm_head"])):
        (tmp_path / "adapter_config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(LlamalabError, match=rf"{key}=.* is not supported"):
            load_adapter(tmp_path, ARGS)
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "r": 0}))
    with pytest.raises(LlamalabError, match="r must be a positive finite number"):
        load_adapter(tmp_path, ARGS)
    with pytest.raises(LlamalabError, match="not a LoRA adapter directory"):
        load_adapter(tmp_path / "nope", ARGS)
    with pytest.raises(LlamalabError, match=r"LoRA rank must be a positive integer, got 0"):
        LoraSpec(rank=0, alpha=1)


def _more_layers(tmp_path):
    """An adapter for a 4-layer model loaded on the 3-layer base."""
    args = ARGS.replace(n_layers=4)
    spec = LoraSpec(rank=4, alpha=8)
    save_adapter(tmp_path / "four", parallel.full_state_dict(lora_model(args, spec, random_state(args)),
                                                             trainable_only=True), spec, args)
    load_adapter(tmp_path / "four", ARGS)


def test_peft_scaling_options(tmp_path):
    """rank_pattern / alpha_pattern / use_rslora give peft's per-module scales."""
    spec = LoraSpec(rank=4, alpha=8)
    model = lora_model(ARGS, spec, random_state(ARGS))
    save_adapter(tmp_path, parallel.full_state_dict(model, trainable_only=True), spec, ARGS)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "alpha_pattern": {"v_proj": 2}, "use_rslora": True}))
    layers = load_adapter(tmp_path, ARGS).layers
    assert layers["layers.0.attention.wq"][2] == pytest.approx(8 / 2)  # alpha / sqrt(r)
    assert layers["layers.2.attention.wv"][2] == pytest.approx(2 / 2)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantized_base_computes_with_its_dequantized_weights(kind):
    """QLoRA's layers compute x Wᵀ with W as torchao dequantizes its NF4Tensor (eagerly, the reference) or
    as int8 absmax rows dequantize; only the adapters get gradients; memory drops to ~4 / ~8 bits a weight."""
    from torchao.quantization import to_nf4

    from llamalab.finetune.qlora import frozen_bytes, nf4_scaler_block, quantize_base

    state = random_state(ARGS)
    spec = LoraSpec(rank=4, alpha=8, targets=ALL)
    model = lora_model(ARGS, spec, state, b_std=0.05)
    full = frozen_bytes(model)
    quantize_base(model, kind)
    linear = [k for k in state if k.startswith("layers.") and k.endswith("w1.weight") or "attention.w" in k]
    deq = dict(state)
    for k in linear + [k for k in state if "feed_forward" in k]:
        w = state[k]
        if kind == "nf4":
            deq[k] = to_nf4(w.contiguous(), 64, nf4_scaler_block(w.numel())).get_original_weight()
        else:
            scale = w.abs().amax(1, keepdim=True) / 127
            deq[k] = torch.round(w / scale).clamp(-127, 127) * scale
            assert ((deq[k] - w).abs() <= scale / 2 + 1e-7).all()
    reference = lora_model(ARGS, spec, deq, b_std=0.05)  # the same adapters (same seeds) on the dequantized base
    torch.testing.assert_close(model(TOKENS), reference(TOKENS), rtol=1e-5, atol=1e-5)
    model.train()
    model(TOKENS).logsumexp(-1).mean().backward()
    grads = {n: p.grad is not None for n, p in model.named_parameters()}
    assert all(has == ("lora_" in n) for n, has in grads.items()) and any(grads.values())
    assert frozen_bytes(model) < (0.5 if kind == "nf4" else 0.6) * full  # the 512×64 embedding stays fp32


def test_dropout_drops_p_of_the_elements_independently_and_scales_the_rest():
    """LoRA's dropout against what inverted dropout must be: P(zero) = p per element (p rounded to 2⁻¹⁵) for
    every position of the four that share a 64-bit draw, neighbours independent (P(both kept) = (1-p)²), the
    kept ones scaled to keep the mean, the gradient the mask times that scale; identity in eval mode."""
    n, sigmas = 400_000, 5
    torch.manual_seed(0)
    for p in (0.05, 0.5):
        drop = Dropout(p).train()
        p_eff = round(p * 2**15) / 2**15
        assert abs(p_eff - p) <= 2**-16
        x = torch.ones(n, requires_grad=True)
        y = drop(x)
        kept = y != 0
        assert torch.equal(y[kept], torch.full((int(kept.sum()),), 1 / (1 - p_eff)))
        for lane in range(4):  # each 16-bit lane of a draw, the last one included (its top bit is not random)
            rate = 1 - kept[lane::4].float().mean().item()
            assert abs(rate - p_eff) < sigmas * (p_eff * (1 - p_eff) / (n / 4)) ** 0.5, (p, lane, rate)
        pairs = (kept[0::2] & kept[1::2]).float().mean().item()  # neighbours in one draw and across draws
        assert abs(pairs - (1 - p_eff) ** 2) < sigmas * (0.25 / (n / 2)) ** 0.5, (p, pairs)
        y.sum().backward()
        assert torch.equal(x.grad, y.detach())  # d(mask · scale · x)/dx = mask · scale = y for x = 1
    a, b = Dropout(0.5).train()(torch.ones(1000)), Dropout(0.5).train()(torch.ones(1000))
    assert not torch.equal(a, b)  # a new mask each call
    torch.manual_seed(7)
    a = Dropout(0.3).train()(torch.ones(999))
    torch.manual_seed(7)
    assert torch.equal(a, Dropout(0.3).train()(torch.ones(999)))  # torch's generator: seeded runs repeat
    x = torch.randn(3, 5)
    assert torch.equal(Dropout(0.5).eval()(x), x)
