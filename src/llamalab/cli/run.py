import sys

from .common import add_sampling_arguments, add_threads_argument
from .types import positive_int

HELP = "Run a library model by name: one answer to PROMPT, or a chat in the terminal without one (ollama's run)."


def add_arguments(p):
    p.add_argument("name", help="a library model (`llamalab models list`) or a checkpoint path")
    p.add_argument("prompt", nargs="?", help="answer this and exit (default: chat until /exit or Ctrl-D)")
    add_sampling_arguments(p, max_new_tokens=512)
    p.set_defaults(max_new_tokens=None, temperature=None, repetition_penalty=None)  # None: the Modelfile's value
    p.add_argument("--context", type=positive_int, metavar="N", help="KV-cache tokens (default: the Modelfile's "
                   "num_ctx, else min(model's, 4096))")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="dequantize to this dtype")
    add_threads_argument(p)


def run(args):
    from ..models.run import run as run_model
    from .chat import _read
    from .common import sampling_kwargs

    if args.prompt is not None:
        lines = iter([args.prompt, None])
        read = lambda: next(lines)  # noqa: E731
    else:
        interactive = sys.stdin.isatty()
        if interactive:
            print("llamalab run: /reset starts over, /exit or Ctrl-D quits", file=sys.stderr)
        read = lambda: _read(interactive)  # noqa: E731

    def write(piece: str):
        sys.stdout.write(piece)
        sys.stdout.flush()

    run_model(args.name, read, write, device=args.device, dtype=args.dtype, threads=args.threads,
              context=args.context, **sampling_kwargs(args))
