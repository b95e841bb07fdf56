from ..errors import LlamalabError
from .common import add_threads_argument
from .data_clean import add_clean, run_clean
from .data_quality import add_train_quality, run_train_quality
from .types import finite_float, positive_float, positive_int

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
                         "file), optionally .gz/.xz/.bz2/.zst; repeat for each source")
    pp.add_argument("--demo", action="store_true",
                    help="add the embedded demo corpus as sources prose, reference, qa, code")
    pp.add_argument("--tokenizer", required=True, help="tokenizer.model, tokenizer.json, .gguf or a directory")
    pp.add_argument("--out", required=True, help="output dataset directory")
    pp.add_argument("--workers", type=positive_int, default=None, help="tokenizer processes (default: all cores)")
    pp.add_argument("--text-field", default="text", help="field/column holding the text in jsonl/parquet/arrow")
    pp.add_argument("--val-fraction", type=finite_float, default=0.0,
                    help="fraction of documents held out (by a hash of the text) into val shards")
    pp.add_argument("--shard-tokens", type=positive_int, default=1 << 27, help="tokens per shard file")
    pp.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(pp)

    add_clean(sub)
    add_train_quality(sub)

    pm = sub.add_parser("mixture", help="share, tokens sampled and epochs per source for a training budget",
                        description="Per source: share of the mixture, tokens sampled when training on --tokens "
                                    "tokens, and the resulting epochs (the paper's Table 1).")
    pm.add_argument("--data", help="prepared dataset directory (or manifest.json); without it, the paper's "
                                   "Table 1 is printed")
    pm.add_argument("--weights", default=None, help="name=weight,... or a preset (llama); default: the "
                                                    "dataset's natural mixture (by size)")
    pm.add_argument("--tokens", type=positive_float, default=None, help="training tokens (e.g. 1.4e12)")


def run(args):
    if args.data_command == "clean":
        return run_clean(args)
    if args.data_command == "train-quality":
        return run_train_quality(args)
    if args.data_command == "prepare":
        from ..data.prepare import parse_sources, prepare

        manifest = prepare(parse_sources(args.source, demo=args.demo), args.tokenizer, args.out, workers=args.workers, text_field=args.text_field,
                           val_fraction=args.val_fraction, shard_tokens=args.shard_tokens,
                           progress=not args.no_progress)
        total = sum(s["tokens"] for s in manifest["sources"].values())
        print(f"{args.out}: {len(manifest['sources'])} sources, {total:,} training tokens, dtype {manifest['dtype']}")
    elif args.data is None:
        from ..data.mixture import format_table1

        print(format_table1())
    else:
        from ..data.mixture import format_report, parse_mixture, report, source_tokens

        available = source_tokens(args.data)
        mixture = parse_mixture(args.weights) if args.weights else {k: float(v) for k, v in available.items()}
        if args.tokens is None:
            raise LlamalabError("give the training budget with --tokens N (e.g. --tokens 5e6)")
        print(format_report(report(mixture, available, args.tokens)))
