import argparse
import sys

from ..errors import LlamalabError

HELP = "Tokenize text: print the pieces, or the token ids (any tokenizer.model / tokenizer.json / GGUF / checkpoint dir)."

EPILOG = """examples:
  llamalab tokenize --tokenizer model.gguf "Hello world"          # pieces
  llamalab tokenize --tokenizer tokenizer.model --ids --bos "Hello world"
  echo "Hello world" | llamalab tokenize --tokenizer out/tok --ids -
  llamalab tokenize --tokenizer model.gguf --jsonl texts.jsonl > ids.txt"""


def add_arguments(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("text", nargs="?", help="the text; `-` reads it from stdin")
    p.add_argument("--tokenizer", "-t", required=True, metavar="PATH",
                   help="tokenizer.model, tokenizer.json, a .gguf file, or a directory holding one")
    p.add_argument("--ids", action="store_true", help="print token ids space-separated on one line")
    p.add_argument("--bos", action="store_true", help="prepend the BOS token")
    p.add_argument("--eos", action="store_true", help="append the EOS token")
    p.add_argument("--no-special", action="store_true",
                   help="read special-token text such as <s> or <|im_start|> as plain text")
    p.add_argument("--jsonl", metavar="FILE",
                   help="tokenize many texts: each line a JSON string (or {\"text\": ...}); prints one line of ids per text")


def run(args):
    from ..textio import iter_texts
    from ..tokenizer import load_tokenizer

    if (args.text is None) == (args.jsonl is None):
        raise LlamalabError("give exactly one of TEXT (`-` for stdin) or --jsonl FILE")
    tok = load_tokenizer(args.tokenizer)
    opts = dict(bos=args.bos, eos=args.eos, special=not args.no_special)

    if args.jsonl:
        texts = list(iter_texts(args.jsonl, fmt=".jsonl"))
        for start in range(0, len(texts), 4096):
            batch = tok.encode_batch(texts[start:start + 4096], **opts)
            sys.stdout.write("".join(" ".join(map(str, ids)) + "\n" for ids in batch))
        return 0

    text = _read_stdin() if args.text == "-" else args.text
    ids = tok.encode(text, **opts)
    print(" ".join(map(str, ids)) if args.ids else " ".join(tok.id_to_piece(i) for i in ids))
    return 0


def _read_stdin() -> str:
    """Standard input exactly as given (no newline translation); bytes that are not UTF-8 are one clear error."""
    if not hasattr(sys.stdin, "buffer"):  # a replaced sys.stdin (a StringIO) is text already
        return sys.stdin.read()
    from ..bounded import max_record_bytes, read_capped

    raw = read_capped(sys.stdin.buffer, max_record_bytes(), "standard input", "text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LlamalabError(f"standard input is not valid UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}; "
                            f"convert it first (e.g. with iconv)") from None
