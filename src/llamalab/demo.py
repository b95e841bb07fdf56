"""The whole paper in miniature on 2 CPU cores: corpus → tokenizer → shards → pretraining → samples.

    from llamalab.demo import demo_config, run_demo
    run_demo("runs/demo")                                          # what `llamalab demo` runs (~10 minutes)
    run_demo("runs/quick", quick=True)                             # a one-minute smoke run
    run_demo("runs/mine", config=dataclasses.replace(demo_config(), lr=1e-3), steps=200)

Also here: the demo's helpers, which `llamalab experiment` trains with too (a corpus slice for `quick`,
the corpus's tokenizer and shards, minutes turned into a fixed step count, and the unigram baseline the
held-out perplexity is compared with).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from . import threads
from .data.corpus import DEMO_MIXTURE, demo_sources
from .data.loader import TokenLoader
from .data.prepare import prepare
from .data.shards import read_manifest
from .generate import decode_text, generate
from .model import Transformer
from .runtime import load_runnable
from .tokenizer import load_tokenizer, train_tokenizer
from .train import TrainConfig, load_config, resolve_config_path
from .train.loop import fit, next_token_loss, setup
from .train.metrics import MetricsLog
from .train.optim import build_optimizer

PROMPTS = ["The President of the United States", "Call me Ishmael.", "def read_file(path):", "Q: How do I"]


def demo_config(quick: bool = False) -> TrainConfig:
    """The bundled `demo` training config (an 8.6M-parameter LLaMA); `quick`: a tiny model, short windows."""
    cfg = load_config(resolve_config_path("demo"))
    if quick:
        cfg = dataclasses.replace(cfg, model="tiny", seq_len=64, eval_every=10, eval_batches=4, ckpt_every=0)
    return cfg


def run_demo(out="runs/demo", *, quick: bool = False, minutes: float = 8.5, steps: int | None = None,
             refits=(), config: TrainConfig | None = None, progress: bool = True) -> dict:
    """Build the corpus, train the tokenizer, pack the shards and pretrain with `config` (default
    `demo_config(quick)`; the demo fills in its data, tokenizer, mixture, vocabulary size, out_dir and
    step count: `steps` (with the re-fits `refits` of an earlier run, [(k, n)]), or as many as fit in `minutes`
    after a timed warm-up, re-fit on the way by `TimeBudget`). Prints each stage, then samples and the held-out
    perplexity next to the unigram baseline. Returns the training summary."""
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or demo_config(quick)
    suffix = "-quick" if quick else ""

    def stage(n, text):
        print(f"\n[{n}/5] {text}  (+{time.perf_counter() - t_start:.0f}s)", flush=True)

    stage(1, "corpus: the embedded mixture (prose, reference, code, Q&A), public domain / CC0 / PSF")
    sources = demo_sources()
    if quick:
        sources = quick_corpus(sources, out / "corpus-quick", docs=120)
    for name, path in sources.items():
        print(f"  {name:10s} {path.stat().st_size / 1e6:6.1f} MB  weight {DEMO_MIXTURE[name]:.2f}")

    vocab = cfg.model_args().vocab_size
    stage(2, f"tokenizer: SentencePiece BPE, {vocab} pieces, digits split, byte fallback (paper §2.1)")
    tok_dir = out / f"tokenizer{suffix}"
    tok = corpus_tokenizer(list(sources.values()), tok_dir, vocab, sentences=20_000 if quick else 300_000,
                           progress=progress)
    sample = "In 1913, the President said: def f(x): return x ** 2"
    print(f"  {sample!r} → {[tok.id_to_piece(i) for i in tok.encode(sample)][:24]}")

    stage(3, "data: tokenize + pack into uint16 shards, 5% of documents held out")
    data_dir = out / f"data{suffix}"
    pack_corpus(sources, tok_dir, data_dir, progress=progress)

    stage(4, "pretraining: AdamW (0.9, 0.95), wd 0.1, clip 1.0, warmup + cosine to 10%")
    model = cfg.model if isinstance(cfg.model, dict) else {"preset": cfg.model}
    cfg = dataclasses.replace(cfg, data=str(data_dir), tokenizer=str(tok_dir), mixture=dict(DEMO_MIXTURE),
                              model={**model, "vocab_size": tok.vocab_size}, out_dir=str(out / f"train{suffix}"),
                              progress=progress)
    if steps is None and quick:
        steps = 30
    replan = None
    if steps is None:
        steps, step_s = calibrate_steps(cfg, minutes * 60)
        replan = TimeBudget(MARGIN * minutes * 60)
        print(f"  warm-up: {step_s:.2f} s/step → {steps} steps for {minutes:g} minutes (re-fit at 1/4, 1/2, 3/4 "
              f"and 7/8 of the time if the steps get slower)")
    cfg = dataclasses.replace(cfg, max_steps=steps)
    shutil.rmtree(cfg.out_dir, ignore_errors=True)  # the demo always starts fresh
    run = setup(cfg)
    run.refits = [tuple(r) for r in refits]
    summary = fit(run, replan)
    if summary["refits"]:
        plan = ",".join(f"{k}:{n}" for k, n in summary["refits"])
        print(f"  to repeat this run: llamalab demo --steps {steps} --refits {plan}")

    stage(5, "results")
    show_results(cfg, summary)
    print(f"\n  everything is in {out}/:\n    tokenizer   {tok_dir}\n    data        {data_dir}\n"
          f"    metrics     {cfg.out_dir}/metrics.jsonl\n    loss curve  {summary['loss_png']}\n"
          f"    checkpoints {cfg.out_dir}/ckpt\n    model (HF)  {summary['model_dir']}"
          f"\n  total {time.perf_counter() - t_start:.0f}s")
    return summary


def show_results(cfg: TrainConfig, summary: dict) -> None:
    """Samples from the exported model, and its held-out perplexity next to the unigram baseline."""
    ckpt = load_runnable(summary["model_dir"], device="cpu", dtype="float32")
    torch.manual_seed(0)
    print("  samples (temperature 0.8, top-k 40):")
    for prompt in PROMPTS:
        ids = ckpt.tokenizer.encode(prompt, bos=True)
        new = generate(ckpt.model, [ids], max_new_tokens=40, temperature=0.8, top_k=40, seed=0,
                       stop_ids=ckpt.tokenizer.stop_ids)[0]
        text = decode_text(new, ckpt.tokenizer, stop_ids=ckpt.tokenizer.stop_ids)
        print(f"  » {prompt}{text}".replace("\n", "⏎")[:200])
    val_loss, unigram = summary.get("val_loss"), unigram_baseline(cfg)
    print(f"\n  held-out perplexity  {math.exp(val_loss):10.1f}   (loss {val_loss:.3f} nats/token)")
    print(f"  unigram baseline     {math.exp(unigram):10.1f}   (training-token frequencies, same held-out tokens)")
    print(f"  trained {summary['step']} steps × {summary['tokens_per_step']:,} tokens of a "
          f"{summary['params'] / 1e6:.1f}M-parameter LLaMA, ~{summary.get('tokens_per_s') or 0:,.0f} tokens/s")
    mfus = sorted(r["mfu"] for r in MetricsLog(Path(cfg.out_dir) / "metrics.jsonl").read() if r.get("mfu"))
    if mfus:
        print(f"  MFU {mfus[len(mfus) // 2]:.0%} (median step; against {summary['peak_flops']})")


def corpus_tokenizer(files: list[Path], tok_dir: Path, vocab_size: int, *, sentences: int, progress: bool):
    """The tokenizer in `tok_dir` if one was trained there before, else a new one trained on `files` (the
    paper's SentencePiece BPE settings, at most `sentences` sampled lines)."""
    if (tok_dir / "tokenizer.model").is_file():
        tok = load_tokenizer(tok_dir)
        print(f"  reusing {tok_dir} ({tok.vocab_size} pieces)")
        return tok
    return train_tokenizer(files, vocab_size, tok_dir, input_sentence_size=sentences, progress=progress)


def pack_corpus(sources: dict[str, Path], tok_dir: Path, data_dir: Path, *, progress: bool) -> None:
    """Tokenize and pack each source into `data_dir`, 5% of documents held out (idempotent: an unchanged
    source is left alone)."""
    prepare({k: [v] for k, v in sources.items()}, tok_dir / "tokenizer.model", data_dir, val_fraction=0.05,
            progress=progress)


def quick_corpus(sources: dict[str, Path], out: Path, docs: int) -> dict[str, Path]:
    """The first `docs` documents of each source (written once)."""
    out.mkdir(parents=True, exist_ok=True)
    sliced = {}
    for name, path in sources.items():
        dest = out / path.name
        if not dest.is_file():
            with open(path) as f:
                dest.write_text("".join(itertools.islice(f, docs)))
        sliced[name] = dest
    return sliced


MARGIN = 0.85  # of the time budget the training steps are fitted to: evaluation, checkpoints and export take the rest


class TimeBudget:
    """The demo's re-fit rule (a `fit` replan): when 1/4, 1/2, 3/4 and 7/8 of `seconds` have passed, the steps
    still to come are timed at the speed of the steps since the last check (their evaluations and checkpoints
    included); a run that would end more than 5% late is shortened to end on time. Never lengthened. The
    learning rate's cosine is compressed into the shorter run (`train.optim.cosine_progress`)."""

    def __init__(self, seconds: float, checks=(0.25, 0.5, 0.75, 0.875), tolerance: float = 0.05):
        self.seconds, self.checks, self.tolerance = seconds, list(checks), tolerance
        self.last = (0, 0.0)  # (step, seconds) at the last check

    def __call__(self, step: int, elapsed: float, end: int) -> int | None:
        if not self.checks or elapsed < self.checks[0] * self.seconds:
            return None
        self.checks.pop(0)
        per_step = (elapsed - self.last[1]) / max(1, step - self.last[0])
        self.last = (step, elapsed)
        if elapsed + (end - step) * per_step <= (1 + self.tolerance) * self.seconds:
            return None
        new_end = step + max(1, int((self.seconds - elapsed) / per_step))
        if new_end >= end:
            return None
        print(f"\n  re-fit at step {step}: {per_step:.2f} s/step since the last check → {new_end} steps instead of "
              f"{end} (the cosine compressed into the rest)", flush=True)
        return new_end


def calibrate_steps(cfg: TrainConfig, seconds: float, warmup_steps: int = 4) -> tuple[int, float]:
    """Time a few full training steps of this model (random tokens, same shapes) and return
    (steps that fit in `seconds`, seconds per step). Evaluation and checkpoints take the margin."""
    args = cfg.model_args()
    model = Transformer(args)
    model.init_weights(cfg.init_std, torch.Generator().manual_seed(cfg.seed))
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    x = torch.randint(0, args.vocab_size, (cfg.micro_batch_size, cfg.seq_len + 1))
    times = []
    for _ in range(warmup_steps):
        threads.adapt()  # timed at the thread count training will use
        t0 = time.perf_counter()
        logits = model(x[:, :-1])
        next_token_loss(logits, x[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[1:]))  # the first step pays one-time allocation
    eval_share = cfg.eval_batches / 3 / max(1, cfg.eval_every)  # a forward pass ≈ 1/3 of a training step
    return max(10, int(MARGIN * seconds / (step_s * (1 + eval_share)))), step_s


def unigram_baseline(cfg: TrainConfig) -> float:
    """Cross-entropy (nats/token) on the held-out batches the trainer evaluates, of a unigram model whose
    probabilities are the training tokens' frequencies in each source, mixed with the mixture's weights
    (add-one smoothing). The model has to beat this to have learned anything beyond token counts."""
    manifest, root = read_manifest(cfg.data)
    vocab = cfg.model_args().vocab_size
    weights = cfg.mixture or {k: float(v["tokens"]) for k, v in manifest["sources"].items()}
    total_w = sum(weights.values())
    probs = np.zeros(vocab)
    for name, w in weights.items():
        counts = np.zeros(vocab)
        for shard in manifest["sources"][name]["shards"]:
            tokens = np.memmap(root / shard["file"], dtype=manifest["dtype"], mode="r")
            counts += np.bincount(tokens, minlength=vocab)[:vocab]
        probs += (w / total_w) * (counts + 1) / (counts.sum() + vocab)
    val = TokenLoader(cfg.data, seq_len=cfg.seq_len, batch_size=cfg.micro_batch_size, mixture=cfg.mixture,
                      seed=cfg.seed, split="val")
    nll = [-np.log(probs[next(val)[1].numpy()]).mean() for _ in range(cfg.eval_batches)]
    return float(np.mean(nll))
