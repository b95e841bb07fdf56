from ..errors import LlamalabError
from .common import add_threads_argument
from .types import positive_float, positive_int

HELP = ("The whole paper in miniature on 2 CPU cores: corpus → tokenizer → shards → pretraining → samples "
        "(--vision: LLaVA's two stages on synthetic pictures).")


def add_arguments(p):
    p.add_argument("--out", help="where everything goes (default: runs/demo, with --vision runs/vision-demo)")
    p.add_argument("--minutes", type=positive_float, default=8.5,
                   help="training budget; converted to a fixed step count from a short timed warm-up (default 8.5)")
    p.add_argument("--steps", type=positive_int, help="train exactly this many steps instead of --minutes")
    p.add_argument("--refits", metavar="K:N,...", help="with --steps: the re-fits an earlier run printed (from step "
                   "K on it ended at N), to repeat it exactly")
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run: small corpus slice, tiny model")
    p.add_argument("--vision", action="store_true", help="LLaVA's two stages instead: synthetic pictures, a small "
                   "ViT trained from scratch with the projector onto SmolLM2-135M-Instruct, held-out accuracy")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_threads_argument(p)


def run(args):
    if args.vision:
        from ..vision_demo.run import run_vision_demo

        if args.steps is not None or args.refits or args.minutes != 8.5:
            raise LlamalabError("--minutes, --steps and --refits are the text demo's; --vision runs a fixed plan "
                                "(--quick for the smoke run)")
        run_vision_demo(args.out or "runs/vision-demo", quick=args.quick, progress=args.progress)
        return
    from ..demo import run_demo

    run_demo(args.out or "runs/demo", quick=args.quick, minutes=args.minutes, steps=args.steps, refits=parse_refits(args),
             progress=args.progress)


def parse_refits(args) -> list[tuple[int, int]]:
    if not args.refits:
        return []
    if args.steps is None:
        raise LlamalabError("--refits repeats a run: give it with that run's --steps")
    try:
        pairs = [tuple(int(x) for x in item.split(":")) for item in args.refits.split(",")]
    except ValueError:
        pairs = [()]
    if not all(len(p) == 2 and 0 < p[0] <= p[1] for p in pairs) or [p[0] for p in pairs] != sorted(p[0] for p in pairs):
        raise LlamalabError(f"--refits {args.refits!r}: write K:N,... as the demo printed it "
                            f"(steps K ascending, N >= K)")
    return pairs
