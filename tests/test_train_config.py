"""The learning-rate schedule against the paper's formula at every step, and the config surface
(YAML/TOML files, command-line overrides, unknown keys, batch-size arithmetic)."""

from __future__ import annotations

import math

import pytest

from llamalab.errors import LlamalabError
from llamalab.train import TrainConfig, load_config
from llamalab.train.optim import lr_at, param_groups
from token_data import write_token_dataset


def paper_lr(t, peak, warmup, total, final_ratio):
    """Written out independently from §2.3 of the paper: linear warmup over `warmup` updates to the peak,
    then a cosine whose end (update `total`) is 10% of the peak: η_t = η_min + ½(η_max − η_min)(1 + cos(π·τ))."""
    if t < warmup:
        return peak * (t + 1) / warmup
    tau = (t - warmup) / (total - warmup)
    eta_min = final_ratio * peak
    return eta_min + (peak - eta_min) * (1 + math.cos(math.pi * tau)) / 2


@pytest.mark.parametrize("peak,warmup,total", [(3e-4, 2000, 30_000), (1.5e-4, 100, 5_000), (1e-3, 10, 100)])
def test_lr_schedule_every_step(peak, warmup, total):
    for t in range(total + 1):
        assert lr_at(t, peak=peak, warmup=warmup, max_steps=total, min_ratio=0.1) == pytest.approx(
            paper_lr(t, peak, warmup, total, 0.1), rel=1e-12, abs=0)
    # the landmarks the paper names: the peak right after warmup, 10% of it at the end
    assert lr_at(warmup - 1, peak=peak, warmup=warmup, max_steps=total) == pytest.approx(peak)
    assert lr_at(total, peak=peak, warmup=warmup, max_steps=total) == pytest.approx(0.1 * peak)


def test_lr_schedule_after_a_refit():
    """A run re-planned at step k to end at n: the cosine's remaining fraction is compressed into k..n (the
    rate continuous at k, the floor at n); a re-fit during the warmup is the plain schedule of n steps."""
    peak, warmup, total, k, n = 1e-3, 10, 100, 40, 70
    lr = lambda t, refits: lr_at(t, peak=peak, warmup=warmup, max_steps=total, refits=refits)
    for t in range(k + 1):  # up to the re-fit: the original plan
        assert lr(t, [(k, n)]) == lr(t, [])
    done = (k - warmup) / (total - warmup)
    for t in range(k, n + 1):
        tau = done + (1 - done) * (t - k) / (n - k)
        assert lr(t, [(k, n)]) == pytest.approx(0.1 * peak + 0.9 * peak * (1 + math.cos(math.pi * tau)) / 2, rel=1e-12)
    assert lr(n, [(k, n)]) == pytest.approx(0.1 * peak) and lr(n + 5, [(k, n)]) == pytest.approx(0.1 * peak)
    for t in range(n + 1):
        assert lr(t, [(5, n)]) == lr_at(t, peak=peak, warmup=warmup, max_steps=n)
    # two re-fits: the second compresses what the first left
    lr2 = lambda t: lr(t, [(k, n), (55, 60)])
    assert lr2(55) == lr(55, [(k, n)]) and lr2(60) == pytest.approx(0.1 * peak)


def test_paper_hyperparameters_are_the_defaults():
    cfg = TrainConfig(data="x")  # §2.3: AdamW β 0.9/0.95, wd 0.1, clip 1.0, 2000 warmup, final lr 10%
    assert (cfg.betas, cfg.weight_decay, cfg.grad_clip, cfg.warmup_steps, cfg.min_lr_ratio) == ((0.9, 0.95), 0.1, 1.0, 2000, 0.1)


def test_no_weight_decay_on_norms():
    from llamalab.config import get_preset
    from llamalab.model import Transformer

    model = Transformer(get_preset("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[-2] for p in no_decay["params"]} == {"attention_norm", "ffn_norm", "norm"}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_yaml_toml_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("model: tiny\ndata: d\nlr: 3e-4\nmax_steps: 100\nwarmup_steps: 10\n")
    (tmp_path / "a.toml").write_text('model = "tiny"\ndata = "d"\nlr = 3e-4\nmax_steps = 100\nwarmup_steps = 10\n')
    a, b = load_config(tmp_path / "a.yaml"), load_config(tmp_path / "a.toml")
    assert a == b and a.lr == 3e-4  # YAML's "3e-4" (a string to YAML 1.1) is read as the float
    c = load_config(tmp_path / "a.yaml", [("lr", "1e-3"), ("model.n_layers", "3"), ("betas", "[0.9, 0.99]"),
                                         ("activation-checkpointing", "true")])
    assert (c.lr, c.model_args().n_layers, c.betas, c.activation_checkpointing) == (1e-3, 3, (0.9, 0.99), True)
    assert c.model_args().dim == 64  # the rest of the preset is kept


def test_bundled_configs_load():
    from llamalab.train import resolve_config_path

    demo = load_config(resolve_config_path("demo"), [("data", "d")])
    paper = load_config(resolve_config_path("llama-7b"), [("data", "d")])
    assert paper.model_args().dim == 4096 and paper.lr == 3e-4 and paper.batch_tokens == 4 * 1024 * 1024
    assert paper.accumulation_steps(world_size=256) * 256 * paper.micro_batch_size * paper.seq_len == 4 * 1024 * 1024
    assert demo.model_args().n_layers >= 2


@pytest.mark.parametrize("overrides,match", [
    ([("learning_rate", "1")], r"unknown config key 'learning_rate'; valid keys: model, tokenizer"),
    ([("model.width", "3")], r"unknown model config keys \['width'\]"),
    ([("model", "llama-8m")], r"unknown model preset 'llama-8m'"),
    ([("parallel", "zero3")], r"parallel must be none, ddp or fsdp"),
    ([("max_steps", "100")], r"warmup \(2000 steps\) must be shorter than max_steps"),
    ([("lr", "fast")], r"lr must be a number"),
])
def test_bad_config_is_one_clear_error(overrides, match):
    with pytest.raises(LlamalabError, match=match):
        load_config(None, [("data", "d"), ("max_steps", "10000"), *overrides])


def test_batch_tokens_by_accumulation():
    cfg = TrainConfig(data="d", seq_len=256, micro_batch_size=8, batch_tokens=8192)
    assert cfg.accumulation_steps(1) == 4 and cfg.accumulation_steps(2) == 2
    with pytest.raises(LlamalabError, match="not a multiple of micro_batch_size"):
        cfg.accumulation_steps(3)


def test_accumulation_equals_one_big_batch(tmp_path):
    """Gradient accumulation is exact: 2 micro-batches of 2 give the update of one batch of 4 (same rows)."""
    import numpy as np

    from llamalab.train import train

    write_token_dataset(tmp_path / "d", {"a": np.random.default_rng(0).integers(0, 512, 20_000)}, vocab_size=512)
    runs = {}
    for name, kw in {"big": dict(micro_batch_size=4), "accum": dict(micro_batch_size=2, batch_tokens=128)}.items():
        cfg = TrainConfig(data=str(tmp_path / "d"), seq_len=32, max_steps=3, warmup_steps=1, lr=1e-2, export=False,
                          progress=False, out_dir=str(tmp_path / name), **kw)
        train(cfg)
        runs[name] = [l for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    import json
    big = [json.loads(l)["loss"] for l in runs["big"]]
    acc = [json.loads(l)["loss"] for l in runs["accum"]]
    # the loader hands out rows in global-batch order, so the 4 rows are the same; sums differ only by rounding
    np.testing.assert_allclose(acc, big, rtol=1e-5)
