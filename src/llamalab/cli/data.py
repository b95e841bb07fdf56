HELP = ("Clean raw text (the paper's §2.1 pipeline), train the quality classifier, prepare pretraining data "
        "(tokenize + pack shards) and report mixtures (epochs per source, Table 1).")


def add_arguments(p):
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    pp = sub.add_parser("prepare", help="tokenize text sources in parallel into packed shards + manifest.json",
                        description="Tokenize text sources into packed uint16/uint32 shards plus manifest.json. "
                                    "Re-running with unchanged inputs does nothing.",
                        epilog="example: llamalab data prepare --source web=crawl/ --source code=code.jsonl.gz "
                               "--tokenizer tok/tokenizer.model --out data/ --val-fraction 0.01")
    pp.add_argument("--source", action="append", default=[], metavar="NAME=PATH[,PATH...]",
                    help="a named source: files or directories (walked recursively) of .jsonl (a document "
                         "per line), .parquet/.arrow (a document per row), or plain text (a document per "
                         "file), optionally .gz/.xz/.bz2; repeat for each source")
    pp.add_argument("--demo", action="store_true",
                    help="add the embedded demo corpus as sources prose, reference, qa, code")
    pp.add_argument("--tokenizer", required=True, help="tokenizer.model, tokenizer.json, .gguf or a directory")
    pp.add_argument("--out", required=True, help="output dataset directory")
    pp.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    pp.add_argument("--text-field", default="text", help="field/column holding the text in jsonl/parquet/arrow")
    pp.add_argument("--val-fraction", type=float, default=0.0,
                    help="fraction of documents held out (by a hash of the text) into val shards")
    pp.add_argument("--shard-tokens", type=int, default=1 << 27, help="tokens per shard file")
    pp.add_argument("--no-progress", action="store_true", help="no progress bar")

    _add_clean(sub)
    _add_train_quality(sub)

    pm = sub.add_parser("mixture", help="share, tokens sampled and epochs per source for a training budget",
                        description="Per source: share of the mixture, tokens sampled when training on --tokens "
                                    "tokens, and the resulting epochs (the paper's Table 1).")
    pm.add_argument("--data", help="prepared dataset directory (or manifest.json); without it, the paper's "
                                   "Table 1 is printed")
    pm.add_argument("--weights", default=None, help="name=weight,... or a preset (llama); default: the "
                                                    "dataset's natural mixture (by size)")
    pm.add_argument("--tokens", type=float, default=None, help="training tokens (e.g. 1.4e12)")


def _add_clean(sub):
    pc = sub.add_parser(
        "clean", help="the paper's cleaning pipeline: dedup, language ID, quality, per-source preprocessing",
        description="Clean raw documents with the paper's §2.1 stages (datatrove pipeline steps) into sharded "
                    "jsonl keeping every input field, plus stats.json and a per-stage table. Rerunning resumes; "
                    "a finished output is left alone.",
        epilog="example: llamalab data clean --input crawl/ --output clean/ --workers 8   "
               "(presets: commoncrawl [default], c4, github, wikipedia, books, arxiv, stackexchange)")
    pc.add_argument("--input", nargs="+", required=True, metavar="PATH",
                    help="files or directories: .jsonl(.gz/.zst/.xz/.bz2), .parquet, .arrow, or plain text "
                         "files (one document each)")
    pc.add_argument("--output", required=True, help="output directory (new, empty, or an earlier clean's)")
    pc.add_argument("--preset", default="commoncrawl", help="source preset (default: commoncrawl)")
    pc.add_argument("--stages", default=None, help="comma-separated stages instead of the preset's: normalize, "
                    "normalize_code, line_dedup, exact_dedup, near_dedup, language, c4, gopher, repetition, "
                    "quality, decontaminate, github, arxiv, wikipedia, stackexchange, books")
    pc.add_argument("--workers", type=int, default=1, help="tasks run at once (default 1)")
    pc.add_argument("--tasks", type=int, default=None, help="tasks = output shards (default: one per input "
                    "file or 32 MB of .jsonl, at most 64; independent of --workers)")
    pc.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                    help="local processes, a Ray cluster ($RAY_ADDRESS, else a local one) or Slurm")
    pc.add_argument("--text-field", default="text", help="field/column holding the text")
    pc.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip", help="output compression")
    pc.add_argument("--languages", default=None, help="kept languages, comma-separated ISO codes "
                    "(default: en; the wikipedia preset: its 20)")
    pc.add_argument("--language-threshold", type=float, default=0.5, help="minimum language probability")
    pc.add_argument("--near-threshold", type=float, default=None, help="MinHash Jaccard threshold "
                    "(default 0.8; books 0.9)")
    pc.add_argument("--quality-model", default=None, help="model from `data train-quality` (enables the "
                    "quality stage of the commoncrawl preset)")
    pc.add_argument("--quality-threshold", type=float, default=0.5, help="minimum quality score to keep")
    pc.add_argument("--decontaminate", choices=("drop", "report"), default="drop",
                    help="drop documents sharing a 13-gram with an eval set, or only count them")
    pc.add_argument("--decontaminate-tasks", default=None, help="eval tasks to check (default: all)")
    pc.add_argument("--benchmarks", default=None, help="benchmark data dir (default: `llamalab assets path`'s)")
    pc.add_argument("--slurm-partition", default=None, help="Slurm partition (--executor slurm)")
    pc.add_argument("--slurm-time", default="24:00:00", help="Slurm time limit per task")
    pc.add_argument("--keep-work", action="store_true", help="keep the intermediate files in OUTPUT/.work")
    pc.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_train_quality(sub):
    pq = sub.add_parser(
        "train-quality", help="train the quality classifier (linear, hashed n-grams) used by `data clean`",
        description="Fit the paper's linear quality classifier: logistic regression on hashed word uni- and "
                    "bigrams, positives (e.g. pages cited by Wikipedia) against negatives (random pages).",
        epilog="example: llamalab data train-quality --positive refs.jsonl --negative crawl.jsonl.gz --out q.npz")
    pq.add_argument("--positive", nargs="+", required=True, metavar="PATH", help="good documents (files/dirs)")
    pq.add_argument("--negative", nargs="+", required=True, metavar="PATH", help="other documents (files/dirs)")
    pq.add_argument("--out", required=True, help="model file to write (.npz)")
    pq.add_argument("--text-field", default="text", help="field/column holding the text")


def _parse_sources(specs):
    from ..errors import LlamalabError

    sources = {}
    for spec in specs:
        name, eq, paths = spec.partition("=")
        if not eq or not name or not paths:
            raise LlamalabError(f"bad --source {spec!r}: write NAME=PATH[,PATH...]")
        if name in sources:
            raise LlamalabError(f"source {name!r} given twice; list its paths comma-separated in one --source")
        sources[name] = [p for p in paths.split(",") if p]
    return sources


def run(args):
    if args.data_command == "prepare":
        return _prepare(args)
    if args.data_command == "clean":
        return _clean(args)
    if args.data_command == "train-quality":
        return _train_quality(args)
    return _mixture(args)


def _clean(args):
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # datatrove's inner bars (read at import); ours is explicit
    from ..data.clean import clean, require
    from ..errors import LlamalabError

    require()
    from ..data.clean.pipeline import Options

    for name in ("workers", "tasks"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise LlamalabError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("language_threshold", "quality_threshold") + (("near_threshold",) if args.near_threshold else ()):
        if not 0 <= getattr(args, name) <= 1:
            raise LlamalabError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(args, name)}")
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    opts = Options(preset=args.preset, stages=args.stages, workers=args.workers, tasks=args.tasks,
                   executor=args.executor, text_key=args.text_field,
                   compression=None if args.compression == "none" else args.compression,
                   languages=tuple(split(args.languages)) if args.languages else None,
                   language_threshold=args.language_threshold, near_threshold=args.near_threshold,
                   quality_model=args.quality_model, quality_threshold=args.quality_threshold,
                   decontaminate=args.decontaminate, decontaminate_tasks=split(args.decontaminate_tasks),
                   benchmarks=args.benchmarks, slurm={"partition": args.slurm_partition, "time": args.slurm_time},
                   keep_work=args.keep_work, progress=not args.no_progress)
    clean(args.input, args.output, opts)


def _train_quality(args):
    from ..data.clean import require

    require()
    from ..data.clean.quality import read_texts, save, train

    positive, negative = read_texts(args.positive, args.text_field), read_texts(args.negative, args.text_field)
    result = train(positive, negative)
    save(args.out, result)
    print(f"{args.out}: {result['positive']:,} positive, {result['negative']:,} negative documents; held-out "
          f"accuracy {result['held_out_accuracy']:.3f} on {result['held_out']:,}")


def _prepare(args):
    from ..data.prepare import prepare
    from ..errors import LlamalabError

    sources = _parse_sources(args.source)
    if args.demo:
        from ..data.corpus import demo_sources
        for name, path in demo_sources().items():
            sources.setdefault(name, [path])
    if not sources:
        raise LlamalabError("no sources: give --source NAME=PATH (or --demo)")
    if args.workers is not None and args.workers < 1:
        raise LlamalabError(f"--workers must be at least 1, got {args.workers}")
    if args.shard_tokens < 1:
        raise LlamalabError(f"--shard-tokens must be positive, got {args.shard_tokens}")
    manifest = prepare(sources, args.tokenizer, args.out, workers=args.workers, text_field=args.text_field,
                       val_fraction=args.val_fraction, shard_tokens=args.shard_tokens,
                       progress=not args.no_progress)
    total = sum(s["tokens"] for s in manifest["sources"].values())
    print(f"{args.out}: {len(manifest['sources'])} sources, {total:,} training tokens, dtype {manifest['dtype']}")


def _mixture(args):
    from ..data.mixture import TABLE1, TABLE1_TOKENS, format_report, parse_mixture, report, source_tokens
    from ..errors import LlamalabError

    if args.data is None:
        # the paper's Table 1 as printed, for reference
        print(f"LLaMA paper, Table 1 (epochs for {TABLE1_TOKENS:.1e} training tokens)")
        print(f"{'source':16s} {'sampling':>9s} {'disk':>9s} {'epochs':>7s}")
        for name, row in TABLE1.items():
            disk = f"{row.disk_gb / 1000:.1f} TB" if row.disk_gb >= 1000 else f"{row.disk_gb:.0f} GB"
            print(f"{name:16s} {row.weight:8.1f}% {disk:>9s} {row.epochs:7.2f}")
        return
    available = source_tokens(args.data)
    mixture = parse_mixture(args.weights) if args.weights else {k: float(v) for k, v in available.items()}
    if args.tokens is None:
        raise LlamalabError("give the training budget with --tokens N (e.g. --tokens 5e6)")
    if args.tokens <= 0:
        raise LlamalabError(f"--tokens must be positive, got {args.tokens}")
    print(format_report(report(mixture, available, args.tokens)))
