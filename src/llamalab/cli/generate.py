HELP = "Continue a prompt with a model (greedy or sampled); prints only the continuation, streamed."


def add_sampling_arguments(p, max_new_tokens: int):
    """Options shared by `generate` and `chat`."""
    p.add_argument("--model", required=True, help="checkpoint: .gguf file, HF or Meta directory, or hub id")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most probable tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus: smallest set with total probability >= P")
    p.add_argument("--min-p", type=float, metavar="P", help="drop tokens less than P x the top probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="HF/CTRL penalty, e.g. 1.1")
    p.add_argument("--seed", type=int, metavar="S", help="seed for reproducible sampling")
    p.add_argument("--system", metavar="TEXT", help="system prompt (chat)")
    p.add_argument("--template", metavar="NAME",
                   help="chat template: alpaca, llama-2, chatml, a Jinja file; default: the checkpoint's own")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")


def add_arguments(p):
    p.add_argument("--prompt", required=True, help="the text to continue (with --chat: the user message)")
    add_sampling_arguments(p, max_new_tokens=128)
    p.add_argument("--stop", action="append", default=[], metavar="STR", help="stop at this text (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template as a user turn")
    p.add_argument("--no-stream", action="store_true", help="print the text once, at the end")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence/turn tokens")
    p.add_argument("--truncate", choices=["left"], help="drop the oldest prompt tokens if the context is too small")


def load_checkpoint(args):
    import torch

    import llamalab
    from llamalab.device import resolve_device
    from llamalab.errors import LlamalabError

    device = str(resolve_device(args.device))
    ckpt = llamalab.load(args.model, device=device, dtype=getattr(torch, args.dtype))
    if ckpt.tokenizer is None:
        raise LlamalabError(f"{args.model}: no tokenizer found with the checkpoint "
                            f"(put tokenizer.model or tokenizer.json next to it)")
    return ckpt


def sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def run(args):
    import sys

    from llamalab.chat import render_for
    from llamalab.generate import decode_text, generate, stream, stream_text

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
