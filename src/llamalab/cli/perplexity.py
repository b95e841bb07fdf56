import json

from ..errors import LlamalabError
from .common import add_model_arguments, load_model
from .types import positive_int

HELP = "Perplexity of a model on a text file (sliding windows, Hugging Face's strided recipe)."


def add_arguments(p):
    add_model_arguments(p)
    p.add_argument("--input", required=True, metavar="FILE", help="UTF-8 text file ('-' = standard input)")
    p.add_argument("--context", type=positive_int, default=512, metavar="N", help="window length in tokens (default 512)")
    p.add_argument("--stride", type=positive_int, metavar="N",
                   help="window step; each window scores the tokens past the previous one (default context/2)")
    p.add_argument("--batch", type=positive_int, default=1, metavar="B", help="windows per forward pass")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args):
    from ..textio import read_text
    from ..perplexity import perplexity

    text = read_text(args.input, f"{args.input}: no such file")  # "-": standard input
    rt = load_model(args)
    if args.context > rt.args.max_seq_len:  # before tokenizing a large file
        raise LlamalabError(f"--context {args.context} is larger than the model's context of {rt.args.max_seq_len}")
    tok = rt.tokenizer
    tokens = tok.encode(text, bos=tok.add_bos)
    result = perplexity(rt.model, tokens, context=args.context, stride=args.stride, batch_size=args.batch)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{result.tokens} tokens scored in {result.windows} windows (context {result.context}, "
              f"stride {result.stride}); mean NLL {result.nll:.4f} nats")
        print(f"{result.perplexity:.4f}")
