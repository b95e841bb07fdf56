import sys

from .common import add_chat_arguments, add_model_arguments, add_sampling_arguments, load_checkpoint, sampling_kwargs

HELP = "Continue a prompt with a model (greedy or sampled); prints only the continuation, streamed."


def add_arguments(p):
    p.add_argument("--prompt", required=True, help="the text to continue (with --chat: the user message)")
    add_model_arguments(p)
    add_sampling_arguments(p, max_new_tokens=128)
    add_chat_arguments(p)
    p.add_argument("--stop", action="append", default=[], metavar="STR", help="stop at this text (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template as a user turn")
    p.add_argument("--no-stream", action="store_true", help="print the text once, at the end")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence/turn tokens")
    p.add_argument("--truncate", choices=["left"], help="drop the oldest prompt tokens if the context is too small")


def run(args):
    from ..chat_templates import render_for
    from ..generate import decode_text, generate, stream, stream_text

    ckpt = load_checkpoint(args)
    tok = ckpt.tokenizer
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        text = render_for(tok, messages + [{"role": "user", "content": args.prompt}], args.template)
        prompt = tok.encode(text, bos=False)  # the template places BOS itself
    else:
        prompt = tok.encode(args.prompt, bos=tok.add_bos)
    stop_ids = () if args.ignore_eos else tok.stop_ids
    kw = dict(sampling_kwargs(args), stop_ids=stop_ids, truncate=args.truncate)
    if args.no_stream:
        tokens = generate(ckpt.model, [prompt], **kw)[0]
        sys.stdout.write(decode_text(tokens, tok, stop_ids=stop_ids, stop=args.stop))
    else:
        for piece in stream_text(stream(ckpt.model, prompt, **kw), tok, stop_ids=stop_ids, stop=args.stop):
            sys.stdout.write(piece)
            sys.stdout.flush()
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    sys.stdout.flush()
