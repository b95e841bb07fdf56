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
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dequantize to this dtype (default: quantized weights stay quantized, else float32)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (pays off after the first ~100 tokens)")


def add_arguments(p):
    p.add_argument("--prompt", help="the text to continue (with --chat: the user message)")
    p.add_argument("--input", metavar="FILE", help="answer every question of a JSONL file instead (id, question; "
                   "or Alpaca records), batched, as chat turns; needs --out")
    p.add_argument("--out", metavar="FILE.jsonl", help="with --input: the answers (id, model, answer), appended")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="with --input: answers decoding together")
    p.add_argument("--name", help="with --input: the model's name in the answers (default: the checkpoint's)")
    add_sampling_arguments(p, max_new_tokens=128)
    p.add_argument("--stop", action="append", default=[], metavar="STR", help="stop at this text (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template as a user turn")
    p.add_argument("--no-stream", action="store_true", help="print the text once, at the end")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence/turn tokens")
    p.add_argument("--truncate", choices=["left"], help="drop the oldest prompt tokens if the context is too small")


def load_checkpoint(args):
    import torch

    import llamalab
    from llamalab.errors import LlamalabError

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if getattr(args, "dtype", None) else None
    ckpt = llamalab.load(args.model, device=device, dtype=dtype)
    if ckpt.tokenizer is None:
        raise LlamalabError(f"{args.model}: no tokenizer found with the checkpoint "
                            f"(put tokenizer.model or tokenizer.json next to it)")
    return ckpt


def sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def run(args):
    import sys

    from llamalab.errors import LlamalabError

    if (args.prompt is None) == (args.input is None) or bool(args.input) != bool(args.out):
        raise LlamalabError("give --prompt TEXT, or --input FILE with --out FILE.jsonl")
    if args.input:
        return answer_input(args)

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
    kw = dict(sampling_kwargs(args), stop_ids=stop_ids, truncate=args.truncate, compile=args.compile)
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


def answer_input(args):
    """--input FILE --out FILE.jsonl: the model's answers to every question, batched on the engine."""
    import sys

    import torch

    from llamalab.instruct.answers import answer_questions
    from llamalab.instruct.backends import LocalModel
    from llamalab.instruct.records import load_questions

    questions = load_questions(args.input)
    model = LocalModel(args.model, max_batch=args.batch_size, adapter=getattr(args, "adapter", None), device=args.device,
                       dtype=getattr(torch, args.dtype) if args.dtype else None, template=args.template)
    new = answer_questions(model, questions, args.out, name=args.name or model.name, system=args.system,
                           max_tokens=args.max_new_tokens, **{k: v for k, v in sampling_kwargs(args).items()
                                                              if k != "max_new_tokens"})
    print(f"{args.out}: {new} answers written, {len(questions) - new} were there already", file=sys.stderr)
