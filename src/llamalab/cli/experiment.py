from .types import positive_float, positive_int

HELP = "Reproduce the paper's thesis at small scale: train smaller models longer (over-training study)."

EPILOG = """examples:
  llamalab experiment over-training                      # 4 sizes on the demo corpus, ~15 min of training on 2 cores
  llamalab experiment over-training --sizes 64x2,128x4 --budget-minutes 5 --corpus my_texts/"""


def add_arguments(p):
    import argparse

    from ..plan.experiment import DEFAULT_SIZES

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("study", choices=["over-training"], help="the experiment to run")
    p.add_argument("--corpus", help="a directory (or file) of text to train on (default: the embedded demo corpus)")
    p.add_argument("--sizes", default=DEFAULT_SIZES,
                   help=f"model sizes, smallest to largest: DIMxLAYERS[xHEADS] or preset names (default {DEFAULT_SIZES})")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-minutes", type=positive_float, default=15.0,
                        help="training minutes for all sizes together, split into equal FLOPs (default 15)")
    budget.add_argument("--flops", type=positive_float, help="training FLOPs of each size instead (reproducible anywhere)")
    p.add_argument("--vocab-size", type=positive_int, default=2048, help="tokenizer size (default 2048)")
    p.add_argument("--seq-len", type=positive_int, default=128, help="sequence length (default 128)")
    p.add_argument("--micro-batch", type=positive_int, default=16, help="sequences per step (default 16)")
    p.add_argument("--out", default="runs/over-training", help="output directory (default runs/over-training)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args):
    from ..plan.experiment import format_result, over_training

    result = over_training(args.out, corpus=args.corpus, sizes=args.sizes, budget_minutes=args.budget_minutes,
                           flops=args.flops, vocab_size=args.vocab_size, seq_len=args.seq_len,
                           micro_batch=args.micro_batch, progress=args.progress)
    print(format_result(result))
