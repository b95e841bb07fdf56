"""`llamalab data clean`: its options and call (the `data` subcommand's other actions are in data.py and
data_quality.py)."""

import os

from ..errors import LlamalabError
from .types import positive_int, probability


def add_clean(sub):
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
    pc.add_argument("--workers", type=positive_int, default=1, help="tasks run at once (default 1)")
    pc.add_argument("--tasks", type=positive_int, default=None, help="tasks = output shards (default: one per input "
                    "file or 32 MB of .jsonl, at most 64; independent of --workers)")
    pc.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                    help="local processes, a Ray cluster ($RAY_ADDRESS, else a local one) or Slurm")
    pc.add_argument("--text-field", default="text", help="field/column holding the text")
    pc.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip", help="output compression")
    pc.add_argument("--languages", default=None, help="kept languages, comma-separated ISO codes "
                    "(default: en; the wikipedia preset: its 20)")
    pc.add_argument("--language-threshold", type=probability, default=0.5, help="minimum language probability")
    pc.add_argument("--near-threshold", type=probability, default=None, help="MinHash Jaccard threshold "
                    "(default 0.8; books 0.9)")
    pc.add_argument("--quality-model", default=None, help="model from `data train-quality` (enables the "
                    "quality stage of the commoncrawl preset)")
    pc.add_argument("--quality-threshold", type=probability, default=0.5, help="minimum quality score to keep")
    pc.add_argument("--decontaminate", choices=("drop", "report"), default="drop",
                    help="drop documents sharing a 13-gram with an eval set, or only count them")
    pc.add_argument("--decontaminate-tasks", default=None, help="eval tasks to check (default: all)")
    pc.add_argument("--benchmarks", default=None, help="benchmark data dir (default: `llamalab assets path`'s)")
    pc.add_argument("--slurm-partition", default=None, help="Slurm partition (--executor slurm)")
    pc.add_argument("--slurm-time", default="24:00:00", help="Slurm time limit per task")
    pc.add_argument("--keep-work", action="store_true", help="keep the intermediate files in OUTPUT/.work")
    pc.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_clean(args):
    os.environ.setdefault("TQDM_DISABLE", "1")  # datatrove's inner bars (read at import); ours is explicit
    from ..data.clean import clean, require

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
