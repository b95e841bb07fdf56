"""`llamalab experiment over-training`: the paper's thesis — train smaller models longer — at CPU scale.

Several model sizes get the same training compute (an iso-FLOP budget, counted with the one FLOP count of
`flops.py`), so the smaller ones see proportionally more tokens. Each is trained by the ordinary training
loop (`llamalab.train.train`) with the paper's recipe and its own cosine schedule over its own run, on the
same data; its held-out loss is logged along the way. The result:

- held-out loss against tokens and against training FLOPs, per size (LLaMA's Figure 1, in miniature);
- the inference-cost-adjusted view: for each target loss, which sizes reach it, at what training
  compute, and what each costs to serve per generated token (2·N + 4·L·H·Q·c FLOPs);
- whether a smaller model, given more tokens, passes a larger one's loss — at a lower serving cost.

Budget: the minutes are converted to steps once, from a few timed steps of each size (as the demo does),
so a run is reproducible; on 2 CPU cores the defaults take about 15 minutes of training.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import time
from pathlib import Path

from ..config import ModelArgs, get_preset
from ..bounded import loads
from ..errors import LlamalabError
from .flops import count_params, inference_flops_per_token, training_flops_per_token

DEFAULT_SIZES = "64x2,96x3,128x4,192x6"  # dim x layers, head width 32: ~0.1M to ~2.7M block parameters


def parse_sizes(text: str, vocab_size: int, seq_len: int) -> dict[str, ModelArgs]:
    """'64x2,128x4' (dim × layers, heads of width 32, or DIMxLAYERSxHEADS) or preset names → models."""
    sizes = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = re.fullmatch(r"(\d+)x(\d+)(?:x(\d+))?", item)
        if m:
            dim, layers = int(m.group(1)), int(m.group(2))
            heads = int(m.group(3)) if m.group(3) else max(1, dim // 32)
            if not (dim > 0 and layers > 0 and heads > 0):
                raise LlamalabError(f"size {item!r}: dim, layers and heads must be positive")
            args = ModelArgs(dim=dim, n_layers=layers, n_heads=heads, multiple_of=32)
        else:
            try:
                args = get_preset(item)
            except LlamalabError:
                raise LlamalabError(f"size {item!r}: write DIMxLAYERS (e.g. 128x4), DIMxLAYERSxHEADS or a preset "
                                    f"name") from None
        sizes[item] = args.replace(vocab_size=vocab_size, max_seq_len=seq_len, tie_embeddings=False)
    if len(sizes) < 2:
        raise LlamalabError(f"--sizes {text!r}: name at least two sizes to compare")
    return dict(sorted(sizes.items(), key=lambda kv: count_params(kv[1])))


def first_reaching(points: list[dict], target: float) -> dict | None:
    """Where a loss curve first reaches `target`: tokens and FLOPs interpolated (log-linearly) between the
    two evaluations around the crossing; None if it never does."""
    prev = None
    for p in points:
        if p["val_loss"] <= target:
            if prev is None:
                return {"tokens": p["tokens"], "flops": p["flops"]}
            t = (prev["val_loss"] - target) / (prev["val_loss"] - p["val_loss"])
            return {k: math.exp(math.log(prev[k]) + t * (math.log(p[k]) - math.log(prev[k])))
                    for k in ("tokens", "flops")}
        prev = p
    return None


def analyse(runs: dict[str, dict], n_targets: int = 6) -> dict:
    """Targets between the best and the worst final loss: who reaches each, at what training compute,
    at what serving cost; and the pairs where a smaller model ends below a larger one."""
    finals = {name: r["points"][-1]["val_loss"] for name, r in runs.items()}
    lo, hi = min(finals.values()), max(finals.values())
    targets = [hi - (hi - lo) * i / max(1, n_targets - 1) for i in range(n_targets)] if hi > lo else [lo]
    view = []
    for target in targets:
        reached = {name: first_reaching(r["points"], target) for name, r in runs.items()}
        ok = {n: v for n, v in reached.items() if v is not None}
        view.append({
            "target_loss": target,
            "reached": reached,
            "cheapest_to_train": min(ok, key=lambda n: ok[n]["flops"]) if ok else None,
            "cheapest_to_serve": min(ok, key=lambda n: runs[n]["inference_flops_per_token"]) if ok else None,
        })
    names = list(runs)  # smallest first
    passes = []
    for i, small in enumerate(names):
        for large in names[i + 1:]:
            if finals[small] < finals[large]:
                where = first_reaching(runs[small]["points"], finals[large])
                passes.append({"smaller": small, "larger": large, "smaller_final_loss": finals[small],
                               "larger_final_loss": finals[large], "smaller_tokens_to_pass": where["tokens"],
                               "larger_tokens": runs[large]["points"][-1]["tokens"],
                               "serving_cost_ratio": runs[small]["inference_flops_per_token"]
                               / runs[large]["inference_flops_per_token"]})
    return {"final_loss": finals, "targets": view, "smaller_passes_larger": passes}


def plot(runs: dict[str, dict], analysis: dict, out: Path, title: str) -> None:
    """Three panels: loss vs tokens, loss vs training FLOPs, training FLOPs to reach each target loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from ..atomic import write_bytes

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), dpi=110)
    for name, r in runs.items():
        label = f"{name}: {r['params'] / 1e6:.2f}M params, {r['inference_flops_per_token'] / 1e6:.1f} MFLOP/token served"
        pts = r["points"]
        axes[0].plot([p["tokens"] for p in pts], [p["val_loss"] for p in pts], "o-", ms=3, label=label)
        axes[1].plot([p["flops"] for p in pts], [p["val_loss"] for p in pts], "o-", ms=3, label=label)
        reach = [(t["target_loss"], t["reached"][name]["flops"]) for t in analysis["targets"] if t["reached"][name]]
        if reach:
            axes[2].plot(*zip(*reach), "o-", ms=4, label=label)
    for ax, xlabel in zip(axes[:2], ("training tokens", "training FLOPs (6·N + 12·L·H·Q·T per token)")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axhline(analysis["unigram_baseline"], color="gray", ls="--", lw=1, label="unigram baseline")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out loss (nats/token)")
    axes[2].set_yscale("log")
    axes[2].yaxis.set_minor_formatter(NullFormatter())
    axes[2].invert_xaxis()
    axes[2].set_xlabel("target held-out loss")
    axes[2].set_ylabel("training FLOPs to reach it")
    axes[2].set_title("cost to reach a loss; smaller = cheaper to serve", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(out, buf.getvalue())


def step_flops(cfg) -> int:
    return training_flops_per_token(cfg.model_args(), cfg.seq_len) * cfg.micro_batch_size * cfg.seq_len


def plan_steps(configs: dict, budget_s: float | None, flops: float | None) -> dict[str, int]:
    """Steps per size for equal training FLOPs: `flops` each, or as many as fill `budget_s` seconds at the
    speeds measured in a few timed steps of each size (evaluation takes a share)."""
    if flops is None:
        from ..demo import calibrate_steps

        seconds_per_flop = {n: calibrate_steps(cfg, budget_s, warmup_steps=3)[1] / step_flops(cfg)
                            for n, cfg in configs.items()}
        eval_share = 1 + next(iter(configs.values())).eval_batches / 3 / 10  # ~10 evaluations per run
        flops = 0.9 * budget_s / (sum(seconds_per_flop.values()) * eval_share)
    return {n: max(10, round(flops / step_flops(cfg))) for n, cfg in configs.items()}


def train_size(cfg) -> dict:
    """Train one size afresh through the ordinary training loop; its held-out loss curve with tokens and FLOPs."""
    from ..train import train

    args = cfg.model_args()
    per_token = training_flops_per_token(args, cfg.seq_len)
    shutil.rmtree(cfg.out_dir, ignore_errors=True)  # a study always trains afresh
    summary = train(cfg)
    records = [loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    points = [{"step": r["step"], "tokens": r["tokens"], "flops": r["tokens"] * per_token, "val_loss": r["val_loss"]}
              for r in records if "val_loss" in r]
    if not points:
        raise LlamalabError(f"{cfg.out_dir}: no held-out loss was logged (is the held-out split empty?)")
    return {"model_args": args.to_dict(), "params": count_params(args), "steps": cfg.max_steps,
            "training_flops_per_token": per_token,
            "inference_flops_per_token": inference_flops_per_token(args, cfg.seq_len),
            "tokens_per_s": summary.get("tokens_per_s"), "points": points}


def over_training(out: str | Path = "runs/over-training", *, corpus: str | Path | None = None,
                  sizes: str = DEFAULT_SIZES, budget_minutes: float = 15.0, flops: float | None = None,
                  vocab_size: int = 2048, seq_len: int = 128, micro_batch: int = 16, lr: float = 2e-3,
                  progress: bool = True) -> dict:
    """Run the study; writes `<out>/over-training.json` (every point) and `<out>/over-training.png`.
    `flops`: the training FLOPs of each size, instead of what `budget_minutes` holds on this machine."""
    from ..data.corpus import DEMO_MIXTURE, demo_sources
    from ..data.prepare import expand_inputs
    from ..train import TrainConfig
    from ..demo import corpus_tokenizer, pack_corpus

    t_start = time.perf_counter()
    if not budget_minutes > 0 or (flops is not None and not flops > 0):
        raise LlamalabError(f"--budget-minutes and --flops must be positive, got {budget_minutes:g} and {flops}")
    if seq_len < 2 or micro_batch < 1:
        raise LlamalabError(f"--seq-len must be at least 2 and --micro-batch at least 1, got {seq_len} and {micro_batch}")
    out = Path(out)
    models = parse_sizes(sizes, vocab_size, seq_len)  # before any work: a bad size fails fast
    if corpus is not None:
        corpus = Path(corpus)
        if not corpus.exists() or not expand_inputs([corpus]):
            raise LlamalabError(f"--corpus {corpus}: no text files there (plain text, .jsonl, .parquet; may be "
                                f"compressed)")
        sources, mixture = {"corpus": corpus}, None
    else:
        sources, mixture = demo_sources(), DEMO_MIXTURE
    print(f"[1/3] data: {'the demo corpus' if corpus is None else corpus}, SentencePiece BPE, {vocab_size} pieces",
          flush=True)
    tok_dir, data_dir = out / "tokenizer", out / "data"
    files = expand_inputs(list(sources.values()))
    tok = corpus_tokenizer(files, tok_dir, vocab_size, sentences=200_000, progress=progress)
    pack_corpus(sources, tok_dir, data_dir, progress=progress)
    models = {n: a.replace(vocab_size=tok.vocab_size) for n, a in models.items()}

    def config(name: str, args: ModelArgs, steps: int) -> TrainConfig:
        return TrainConfig(model=args.to_dict(), tokenizer=str(tok_dir), data=str(data_dir), mixture=mixture,
                           seq_len=seq_len, micro_batch_size=micro_batch, lr=lr, warmup_fraction=0.05,
                           max_steps=steps, dtype="fp32", eval_every=max(1, steps // 10), eval_batches=8,
                           ckpt_every=0, keep_last=1, out_dir=str(out / name), export=False, progress=progress)

    print("[2/3] budget: " + (f"{flops:.3g} training FLOPs for each size" if flops else
                               f"{budget_minutes:g} minutes of training, the same FLOPs for each size"), flush=True)
    steps = plan_steps({n: config(n, a, 100) for n, a in models.items()}, budget_minutes * 60, flops)
    runs = {}
    for i, (name, args) in enumerate(models.items(), 1):
        print(f"[3/3] {i}/{len(models)} {name}: {count_params(args):,d} parameters, {steps[name]:,d} steps × "
              f"{micro_batch * seq_len:,d} tokens", flush=True)
        runs[name] = train_size(config(name, args, steps[name]))
    from ..demo import unigram_baseline

    analysis = analyse(runs)
    analysis["unigram_baseline"] = unigram_baseline(config(next(iter(models)), next(iter(models.values())), 10))
    result = {"budget_minutes": None if flops else budget_minutes, "flops_per_size": flops, "seq_len": seq_len,
              "micro_batch": micro_batch, "vocab_size": tok.vocab_size, "corpus": str(corpus) if corpus else "demo", "runs": runs,
              "analysis": analysis, "json": str(out / "over-training.json"), "png": str(out / "over-training.png"),
              "elapsed_s": time.perf_counter() - t_start}
    from ..atomic import write_text

    write_text(out / "over-training.json", json.dumps(result, indent=2))
    plot(runs, analysis, out / "over-training.png",
         f"Train smaller models longer: {len(runs)} sizes, equal training FLOPs each, held-out loss")
    return result


def format_result(result: dict) -> str:
    """The study's numbers and what they say, as text."""
    runs, a = result["runs"], result["analysis"]
    lines = [f"\n{'size':10s} {'params':>9s} {'tokens':>10s} {'tok/param':>9s} {'train FLOPs':>11s} "
             f"{'final loss':>10s} {'serve FLOP/token':>16s}"]
    for name, r in runs.items():
        last = r["points"][-1]
        lines.append(f"{name:10s} {r['params'] / 1e6:8.2f}M {last['tokens']:10,d} {last['tokens'] / r['params']:9.1f} "
                     f"{last['flops']:11.3e} {last['val_loss']:10.3f} {r['inference_flops_per_token'] / 1e6:13.2f}M")
    lines.append(f"{'unigram':10s} {'':>9s} {'':>10s} {'':>9s} {'':>11s} {a['unigram_baseline']:10.3f}   "
                 f"(training-token frequencies: the loss of a model that learned nothing else)")
    lines.append("\nto reach a held-out loss (training FLOPs; — = never within the budget):")
    lines.append(f"  {'loss':>6s}  " + "  ".join(f"{n:>10s}" for n in runs) + "   cheapest to train / to serve")
    for t in a["targets"]:
        cells = "  ".join(f"{t['reached'][n]['flops']:10.2e}" if t["reached"][n] else f"{'—':>10s}" for n in runs)
        lines.append(f"  {t['target_loss']:6.3f}  {cells}   {t['cheapest_to_train']} / {t['cheapest_to_serve']}")
    if a["smaller_passes_larger"]:
        lines.append("\na smaller model passes a larger one's final loss, given more tokens:")
        for p in a["smaller_passes_larger"]:
            lines.append(f"  {p['smaller']} reaches {p['larger']}'s {p['larger_final_loss']:.3f} after "
                         f"{p['smaller_tokens_to_pass']:,.0f} tokens ({p['larger']} saw {p['larger_tokens']:,d}) and "
                         f"ends at {p['smaller_final_loss']:.3f}, at {p['serving_cost_ratio']:.2f}× the serving cost")
    else:
        lines.append("\nno smaller model passed a larger one's final loss within this budget")
    lines.append(f"\nwrote {result['json']} and {result['png']} ({result['elapsed_s'] / 60:.1f} minutes in all)")
    return "\n".join(lines)
