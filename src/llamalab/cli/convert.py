import re

from ..errors import LlamalabError
from .types import positive_int

HELP = ("Convert a checkpoint between formats: GGUF, HF safetensors, Meta .pth (any to any); a LLaVA between "
        "llava-hf and llama.cpp's pair (text GGUF + mmproj).")

DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def add_arguments(p):
    p.add_argument("src", help="a .gguf file, an HF directory, a Meta directory, or a hub id")
    p.add_argument("--to", required=True, choices=["hf", "meta", "gguf"], help="output format")
    p.add_argument("--out", required=True, help="output directory (a file for --to gguf)")
    p.add_argument("--dtype", choices=list(DTYPES), help="weight dtype for hf/meta (default: the source's; "
                   "f32 for quantized GGUF)")
    p.add_argument("--shards", type=positive_int, default=1, help="--to meta: number of model-parallel files (default 1)")
    p.add_argument("--gguf-type", choices=["f32", "f16", "q8_0"], help="--to gguf: tensor type (default f32, "
                   "or f16 with --dtype f16)")
    p.add_argument("--max-shard-size", default="5GB", help="--to hf: split safetensors files larger than "
                   "this (e.g. 5GB, 500MB; default 5GB)")
    p.add_argument("--mmproj", help="LLaVA: with a llava-hf source and --to gguf, where the projector file goes "
                   "(default mmproj-<--out's name> beside it); with a text GGUF source and --to hf, its projector file")
    p.add_argument("--force", action="store_true", help="replace --out if it holds an earlier output (a GGUF "
                   "file, or a directory of checkpoint files only); never the input or the current directory")


def parse_size(text: str) -> int:
    """'5GB' → 5·10⁹ bytes (decimal units, as transformers' max_shard_size)."""

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not m:
        raise LlamalabError(f"--max-shard-size {text!r}: expected a size such as 5GB, 500MB or 1000000")
    unit = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}[m[2]]
    return int(float(m[1]) * unit)


def run(args):
    import torch

    from ..formats import convert

    convert(args.src, args.out, args.to, dtype=getattr(torch, DTYPES[args.dtype]) if args.dtype else None,
            shards=args.shards, gguf_type=args.gguf_type, max_shard_size=parse_size(args.max_shard_size),
            force=args.force, mmproj=args.mmproj)
