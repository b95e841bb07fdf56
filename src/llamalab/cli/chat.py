import sys

from ..errors import LlamalabError
from .common import (add_adapter_argument, add_chat_arguments, add_compile_argument, add_model_arguments,
                     add_sampling_arguments, add_tensor_parallel_argument, context_length, load_sharded,
                     sampling_kwargs)
from .types import positive_int

HELP = "Chat with a model in the terminal (streams answers; /reset clears the conversation, /exit quits)."


def add_arguments(p):
    add_model_arguments(p)
    add_adapter_argument(p)
    add_sampling_arguments(p, max_new_tokens=512)
    add_chat_arguments(p)
    add_compile_argument(p)
    p.add_argument("--context", type=positive_int, metavar="N",
                   help="conversation length in tokens kept in the KV cache, at most the model's "
                   "(default: min(model's, 4096))")
    add_tensor_parallel_argument(p)


def _read(prompt: str, interactive: bool):
    from . import require_utf8

    if interactive:
        return require_utf8(input(prompt), "the message")  # line editing; raises EOFError on Ctrl-D
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return require_utf8(line.rstrip("\n"), "standard input")


def run(args):
    import os

    from ..chat_templates import render_for, resolve_template
    from ..generate import Session, stream_text
    from ..tensor_parallel import share

    context_length(args)  # so do bad numbers
    if args.template:
        resolve_template(args.template)  # a bad name fails before the (slow) load
    ckpt, main = load_sharded(args)  # under --tensor-parallel: rank 0 reads and prints, every rank decodes
    out = sys.stdout if main else open(os.devnull, "w")
    tok = ckpt.tokenizer
    template = resolve_template(args.template, tok)  # fail now, not at the first message
    session = Session(ckpt.model, max_len=context_length(args, ckpt.args.max_seq_len, 4096), compile=args.compile)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    interactive = main and sys.stdin.isatty()
    if interactive:
        print("llamalab chat: /reset starts over, /exit or Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            line = _read("> ", interactive) if main else None
        except EOFError:
            line = None
        line = share(line, session.engine.device)  # rank 0's line (None: the end) on every rank
        if line is None:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages = list(system)
            session.reset()
            continue
        if not line.strip():
            continue
        turn = messages + [{"role": "user", "content": line}]
        answer = []
        try:
            prompt = tok.encode(render_for(tok, turn, template), bos=False)
            tokens = session.stream(prompt, **sampling_kwargs(args), stop_ids=tok.stop_ids)
            for piece in stream_text(tokens, tok, stop_ids=tok.stop_ids):
                answer.append(piece)
                out.write(piece)
                out.flush()
        except LlamalabError as e:
            if main:  # every rank hits the same error (before any collective)
                print(f"llamalab chat: error: {e}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # stop this answer, keep the conversation
            pass
        out.write("\n")
        out.flush()
        messages = turn + [{"role": "assistant", "content": "".join(answer)}]
