"""Helpers of `llamalab demo` (and of `llamalab experiment`, which trains on the same data): a small corpus
slice for --quick, the tokenizer and packed shards of a corpus, turning minutes into a fixed step count, and
the unigram baseline the held-out perplexity is compared with."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig


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


def corpus_tokenizer(files: list[Path], tok_dir: Path, vocab_size: int, *, sentences: int, progress: bool):
    """The tokenizer in `tok_dir` if one was trained there before, else a new one trained on `files` (the
    paper's SentencePiece BPE settings, at most `sentences` sampled lines)."""
    from ..tokenizer import load_tokenizer, train_tokenizer

    if (tok_dir / "tokenizer.model").is_file():
        tok = load_tokenizer(tok_dir)
        print(f"  reusing {tok_dir} ({tok.vocab_size} pieces)")
        return tok
    return train_tokenizer(files, vocab_size, tok_dir, input_sentence_size=sentences, progress=progress)


def pack_corpus(sources: dict[str, Path], tok_dir: Path, data_dir: Path, *, progress: bool) -> None:
    """Tokenize and pack each source into `data_dir`, 5% of documents held out (idempotent: an unchanged
    source is left alone)."""
    from ..data.prepare import prepare

    prepare({k: [v] for k, v in sources.items()}, tok_dir / "tokenizer.model", data_dir, val_fraction=0.05,
            progress=progress)


def calibrate_steps(cfg: TrainConfig, seconds: float, warmup_steps: int = 4) -> tuple[int, float]:
    """Time a few full training steps of this model (random tokens, same shapes) and return
    (steps that fit in `seconds`, seconds per step). Evaluation and checkpoints take the margin."""
    from ..model import Transformer
    from .loop import next_token_loss
    from .optim import build_optimizer

    args = cfg.model_args()
    model = Transformer(args)
    model.init_weights(cfg.init_std, torch.Generator().manual_seed(cfg.seed))
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    x = torch.randint(0, args.vocab_size, (cfg.micro_batch_size, cfg.seq_len + 1))
    times = []
    for _ in range(warmup_steps):
        t0 = time.perf_counter()
        logits = model(x[:, :-1])
        next_token_loss(logits, x[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[1:]))  # the first step pays one-time allocation
    eval_share = cfg.eval_batches / 3 / max(1, cfg.eval_every)  # a forward pass ≈ 1/3 of a training step
    return max(10, int(0.85 * seconds / (step_s * (1 + eval_share)))), step_s


def unigram_baseline(cfg: TrainConfig) -> float:
    """Cross-entropy (nats/token) on the held-out batches the trainer evaluates, of a unigram model whose
    probabilities are the training tokens' frequencies in each source, mixed with the mixture's weights
    (add-one smoothing). The model has to beat this to have learned anything beyond token counts."""
    from ..data.loader import TokenLoader
    from ..data.shards import read_manifest

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
