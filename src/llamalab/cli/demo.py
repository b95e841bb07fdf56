from .common import add_threads_argument

HELP = "The whole paper in miniature on 2 CPU cores: corpus → tokenizer → shards → pretraining → samples."


def add_arguments(p):
    p.add_argument("--out", default="runs/demo", help="where everything goes (default: runs/demo)")
    p.add_argument("--minutes", type=float, default=8.5,
                   help="training budget; converted to a fixed step count from a short timed warm-up (default 8.5)")
    p.add_argument("--steps", type=int, help="train exactly this many steps instead of --minutes")
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run: small corpus slice, tiny model")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_threads_argument(p)


def run(args):
    from ..demo import run_demo

    run_demo(args.out, quick=args.quick, minutes=args.minutes, steps=args.steps, progress=args.progress)
