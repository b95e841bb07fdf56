from .types import nonnegative_float, positive_int, probability, seed

HELP = "Make Alpaca-format instruction data with a teacher model (self-instruct, as Alpaca made its 52K examples)."

EPILOG = """examples:
  llamalab self-instruct --teacher http://127.0.0.1:8000/v1 --out pairs.jsonl --n 200
  llamalab self-instruct --teacher SmolLM2-135M-Instruct.Q4_1.gguf --seed-tasks my_tasks.jsonl --out pairs.jsonl
Rerunning with the same --out continues where the last run stopped."""


def add_arguments(p):
    import argparse

    from .backends import add_backend_arguments

    p.epilog, p.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    add_backend_arguments(p, "teacher")
    p.add_argument("--seed-tasks", metavar="FILE",
                   help="Alpaca records (JSON or JSONL) to start from (default: the 40 tasks shipped with llamalab)")
    p.add_argument("--out", required=True, metavar="FILE.jsonl", help="Alpaca records, appended (resumable)")
    p.add_argument("--n", type=positive_int, default=100, help="records the file should hold in the end (default 100)")
    p.add_argument("--temperature", type=nonnegative_float, default=1.0, help="sampling of new instructions (default 1.0)")
    p.add_argument("--top-p", type=probability, default=0.95, help="nucleus for new instructions (default 0.95)")
    p.add_argument("--answer-temperature", type=nonnegative_float, default=0.7, help="sampling of answers (default 0.7)")
    p.add_argument("--answer-max-tokens", type=positive_int, default=256, metavar="N",
                   help="longest answer; a longer one is dropped (default 256)")
    p.add_argument("--seed", type=seed, default=0, help="which seed tasks are shown, and the requests' seeds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from ..atomic import check_apart
    from ..instruct import SEED_TASKS
    from ..instruct.self_instruct import load_seed_tasks, self_instruct
    from .backends import open_backend

    check_apart(args.out, [args.seed_tasks, args.teacher])
    seeds = load_seed_tasks(args.seed_tasks or SEED_TASKS)  # a bad file fails before the teacher loads
    stats = self_instruct(open_backend(args, args.teacher), seeds, args.out, n=args.n, temperature=args.temperature,
                          top_p=args.top_p, answer_temperature=args.answer_temperature,
                          answer_max_tokens=args.answer_max_tokens, seed=args.seed, progress=not args.no_progress)
    print(f"{args.out}: {stats['total']} records ({stats.get('resumed', 0)} from before, {stats.get('kept', 0)} new)")
    dropped = {k.removeprefix("dropped: "): v for k, v in stats.items() if k.startswith("dropped: ")}
    print(f"  {stats.get('instruction requests', 0)} instruction requests, {stats.get('parsed', 0)} tasks parsed; "
          f"dropped: " + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "none"))
