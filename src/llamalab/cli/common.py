"""Options several subcommands share (not a subcommand itself): the checkpoint to load, sampling, chat."""

from ..errors import LlamalabError


def add_model_arguments(p):
    """--model, --dtype, --device: which checkpoint, loaded how."""
    p.add_argument("--model", required=True, help="checkpoint: .gguf file, HF or Meta directory, or hub id")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")


def add_sampling_arguments(p, max_new_tokens: int):
    """How tokens are picked, and how many."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most probable tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus: smallest set with total probability >= P")
    p.add_argument("--min-p", type=float, metavar="P", help="drop tokens less than P x the top probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="HF/CTRL penalty, e.g. 1.1")
    p.add_argument("--seed", type=int, metavar="S", help="seed for reproducible sampling")


def add_chat_arguments(p):
    """--system, --template: how a conversation becomes a prompt."""
    p.add_argument("--system", metavar="TEXT", help="system prompt (chat)")
    p.add_argument("--template", metavar="NAME",
                   help="chat template: alpaca, llama-2, chatml, a Jinja file; default: the checkpoint's own")


def load_checkpoint(args):
    """The checkpoint of --model on --device (default: the GPU if there is one), which must carry a tokenizer."""
    import torch

    from ..device import resolve_device
    from ..formats import load

    ckpt = load(args.model, device=str(resolve_device(args.device)), dtype=getattr(torch, args.dtype))
    if ckpt.tokenizer is None:
        raise LlamalabError(f"{args.model}: no tokenizer found with the checkpoint "
                            f"(put tokenizer.model or tokenizer.json next to it)")
    return ckpt


def sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
