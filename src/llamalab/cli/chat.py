import sys

from .common import (add_adapter_argument, add_chat_arguments, add_compile_argument, add_mmproj_argument,
                     add_model_arguments, add_sampling_arguments, add_tensor_parallel_argument, context_length,
                     load_model, sampling_kwargs)
from .types import positive_int

HELP = ("Chat with a model in the terminal (streams answers; /image PATH attaches an image to the next message on "
        "a LLaVA checkpoint, /reset clears the conversation, /exit quits).")


def add_arguments(p):
    add_model_arguments(p)
    add_adapter_argument(p)
    add_mmproj_argument(p)
    add_sampling_arguments(p, max_new_tokens=512)
    add_chat_arguments(p)
    add_compile_argument(p)
    p.add_argument("--context", type=positive_int, metavar="N",
                   help="conversation length in tokens kept in the KV cache, at most the model's "
                   "(default: min(model's, 4096))")
    add_tensor_parallel_argument(p)


def _read(interactive: bool) -> str | None:
    """The next message (None: the end, Ctrl-D)."""
    from . import require_utf8

    try:
        if interactive:
            return require_utf8(input("> "), "the message")  # line editing
        line = sys.stdin.readline()
    except EOFError:
        return None
    return require_utf8(line.rstrip("\n"), "standard input") if line else None


def run(args):
    import os

    from ..runtime.chat import converse

    context_length(args)  # so do bad numbers
    rt = load_model(args)  # under --tensor-parallel: rank 0 reads and prints, every rank decodes
    out = sys.stdout if rt.is_main else open(os.devnull, "w")
    interactive = rt.is_main and sys.stdin.isatty()
    if interactive:
        print("llamalab chat: /image PATH attaches an image, /reset starts over, /exit or Ctrl-D quits",
              file=sys.stderr)

    def write(piece: str):
        out.write(piece)
        out.flush()

    converse(rt, lambda: _read(interactive), write, context=context_length(args, rt.args.max_seq_len, 4096),
             system=args.system, **sampling_kwargs(args))
