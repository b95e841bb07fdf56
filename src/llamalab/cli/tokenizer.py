import argparse

from .types import positive_int, seed

HELP = "Train LLaMA's tokenizer (SentencePiece BPE, split digits, byte fallback), inspect or export one."

EPILOG = """examples:
  llamalab tokenizer train --input corpus.txt more.txt.xz --vocab-size 32000 --out out/tok
  llamalab tokenizer info model.gguf
  llamalab tokenizer export model.gguf --out out/hf_tok     # tokenizer.json (+ .model) for transformers"""


def add_arguments(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a SentencePiece BPE tokenizer with the paper's settings")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="text files (.gz/.xz/.bz2 fine; .jsonl: JSON strings or {\"text\": ...})")
    t.add_argument("--vocab-size", type=positive_int, required=True, metavar="N", help="number of pieces (LLaMA: 32000)")
    t.add_argument("--out", required=True, metavar="DIR", help="writes tokenizer.model and tokenizer.json here")
    t.add_argument("--input-sentence-size", type=positive_int, default=2_000_000, metavar="N",
                   help="train on a uniform sample of at most N lines (default 2,000,000)")
    t.add_argument("--threads", type=positive_int, default=None, metavar="N", help="trainer threads (default: all cores)")
    t.add_argument("--seed", type=seed, default=0, help="seed of the line sample")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="print a tokenizer's kind, size and special tokens")
    i.add_argument("path", help="tokenizer.model, tokenizer.json, a .gguf file or a directory")
    e = sub.add_parser("export", help="write a tokenizer as HF files (tokenizer.json, tokenizer_config.json, ...)")
    e.add_argument("path", help="tokenizer.model, tokenizer.json, a .gguf file or a directory")
    e.add_argument("--out", required=True, metavar="DIR")


def run(args):
    from ..atomic import check_apart
    from ..tokenizer import load_tokenizer, train_tokenizer

    if args.action == "train":
        tok = train_tokenizer(args.input, args.vocab_size, args.out, input_sentence_size=args.input_sentence_size,
                              num_threads=args.threads, seed=args.seed, progress=not args.no_progress)
        print(f"wrote {args.out}/tokenizer.model and tokenizer.json ({tok.vocab_size} pieces)")
    elif args.action == "info":
        tok = load_tokenizer(args.path)
        print(f"kind        {tok.kind} ({type(tok).__name__})")
        print(f"vocab_size  {tok.vocab_size}")
        for name in ("bos", "eos", "pad", "unk"):
            i = getattr(tok, f"{name}_id")
            print(f"{name + '_id':<11} {'-' if i is None else f'{i} {tok.id_to_piece(i)!r}'}")
        print(f"add_bos     {tok.add_bos}")
        print(f"stop_ids    {sorted(tok.stop_ids)}")
        print(f"chat        {'yes' if tok.chat_template else 'no'} template")
    elif args.action == "export":
        check_apart(args.out, [args.path])
        load_tokenizer(args.path).save(args.out)
        print(f"wrote {args.out}")
    return 0
