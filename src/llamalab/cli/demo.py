HELP = "The whole paper in miniature on 2 CPU cores: corpus → tokenizer → shards → pretraining → samples."

PROMPTS = ["The President of the United States", "Call me Ishmael.", "def read_file(path):", "Q: How do I"]


def add_arguments(p):
    p.add_argument("--out", default="runs/demo", help="where everything goes (default: runs/demo)")
    p.add_argument("--minutes", type=float, default=8.5,
                   help="training budget; converted to a fixed step count from a short timed warm-up (default 8.5)")
    p.add_argument("--steps", type=int, help="train exactly this many steps instead of --minutes")
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run: small corpus slice, tiny model")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args):
    import shutil
    import time
    from pathlib import Path

    from ..data.corpus import DEMO_MIXTURE, demo_sources
    from ..train import load_config, resolve_config_path, train
    from ..train.demo import calibrate_steps, corpus_tokenizer, pack_corpus, quick_corpus, unigram_baseline
    from ..train.metrics import MetricsLog

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = 512 if args.quick else 8192

    def stage(n, text):
        print(f"\n[{n}/5] {text}  (+{time.perf_counter() - t_start:.0f}s)", flush=True)

    stage(1, "corpus: the embedded mixture (prose, reference, code, Q&A), public domain / CC0 / PSF")
    sources = demo_sources()
    if args.quick:
        sources = quick_corpus(sources, out / "corpus-quick", docs=120)
    for name, path in sources.items():
        print(f"  {name:10s} {path.stat().st_size / 1e6:6.1f} MB  weight {DEMO_MIXTURE[name]:.2f}")

    stage(2, f"tokenizer: SentencePiece BPE, {vocab} pieces, digits split, byte fallback (paper §2.1)")
    tok_dir = out / ("tokenizer-quick" if args.quick else "tokenizer")
    tok = corpus_tokenizer(list(sources.values()), tok_dir, vocab, sentences=20_000 if args.quick else 300_000,
                           progress=args.progress)
    sample = "In 1913, the President said: def f(x): return x ** 2"
    print(f"  {sample!r} → {[tok.id_to_piece(i) for i in tok.encode(sample)][:24]}")

    stage(3, "data: tokenize + pack into uint16 shards, 5% of documents held out")
    data_dir = out / ("data-quick" if args.quick else "data")
    pack_corpus(sources, tok_dir, data_dir, progress=args.progress)

    stage(4, "pretraining: AdamW (0.9, 0.95), wd 0.1, clip 1.0, warmup + cosine to 10%")
    overrides = [("data", str(data_dir)), ("tokenizer", str(tok_dir)), ("mixture", repr(DEMO_MIXTURE)),
                 ("out_dir", str(out / ("train-quick" if args.quick else "train"))),
                 ("progress", str(args.progress).lower())]
    if args.quick:
        overrides += [("model", "{preset: tiny, vocab_size: %d}" % tok.vocab_size), ("seq_len", "64"),
                      ("eval_every", "10"), ("eval_batches", "4"), ("ckpt_every", "0")]
    cfg = load_config(resolve_config_path("demo"), overrides)
    if args.steps or args.quick:
        steps = args.steps or 30
    else:
        steps, step_s = calibrate_steps(cfg, args.minutes * 60)
        print(f"  warm-up: {step_s:.2f} s/step → {steps} steps for {args.minutes:g} minutes "
              f"(fixed from here on, so the run is reproducible)")
    cfg = load_config(resolve_config_path("demo"), overrides + [("max_steps", str(steps))])
    shutil.rmtree(cfg.out_dir, ignore_errors=True)  # the demo always starts fresh
    summary = train(cfg)

    stage(5, "results")
    import math

    import torch

    from .. import load
    from ..generate import decode_text, generate

    ckpt = load(summary["model_dir"])
    torch.manual_seed(0)
    print("  samples (temperature 0.8, top-k 40):")
    for prompt in PROMPTS:
        ids = ckpt.tokenizer.encode(prompt, bos=True)
        new = generate(ckpt.model, [ids], max_new_tokens=40, temperature=0.8, top_k=40, seed=0,
                       stop_ids=ckpt.tokenizer.stop_ids)[0]
        text = decode_text(new, ckpt.tokenizer, stop_ids=ckpt.tokenizer.stop_ids)
        print(f"  » {prompt}{text}".replace("\n", "⏎")[:200])
    val_loss = summary.get("val_loss")
    unigram = unigram_baseline(cfg)
    print(f"\n  held-out perplexity  {math.exp(val_loss):10.1f}   (loss {val_loss:.3f} nats/token)")
    print(f"  unigram baseline     {math.exp(unigram):10.1f}   (training-token frequencies, same held-out tokens)")
    print(f"  trained {summary['step']} steps × {summary['tokens_per_step']:,} tokens of a "
          f"{summary['params'] / 1e6:.1f}M-parameter LLaMA, ~{summary.get('tokens_per_s') or 0:,.0f} tokens/s")
    mfus = sorted(r["mfu"] for r in MetricsLog(Path(cfg.out_dir) / "metrics.jsonl").read() if r.get("mfu"))
    if mfus:
        print(f"  MFU {mfus[len(mfus) // 2]:.0%} (median step; against {summary['peak_flops']})")
    print(f"\n  everything is in {out}/:\n    tokenizer   {tok_dir}\n    data        {data_dir}\n"
          f"    metrics     {cfg.out_dir}/metrics.jsonl\n    loss curve  {summary['loss_png']}\n"
          f"    checkpoints {cfg.out_dir}/ckpt\n    model (HF)  {summary['model_dir']}"
          f"\n  total {time.perf_counter() - t_start:.0f}s")
