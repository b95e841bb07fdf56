HELP = "Convert a checkpoint between formats: GGUF, HF safetensors, Meta .pth (any to any)."

DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def add_arguments(p):
    p.add_argument("src", help="a .gguf file, an HF directory, a Meta directory, or a hub id")
    p.add_argument("--to", required=True, choices=["hf", "meta", "gguf"], help="output format")
    p.add_argument("--out", required=True, help="output directory (a file for --to gguf)")
    p.add_argument("--dtype", choices=list(DTYPES), help="weight dtype for hf/meta (default: the source's; "
                   "f32 for quantized GGUF)")
    p.add_argument("--shards", type=int, default=1, help="--to meta: number of model-parallel files (default 1)")
    p.add_argument("--gguf-type", choices=["f32", "f16", "q8_0"], help="--to gguf: tensor type (default f32, "
                   "or f16 with --dtype f16)")
    p.add_argument("--max-shard-size", default="5GB", help="--to hf: split safetensors files larger than "
                   "this (e.g. 5GB, 500MB; default 5GB)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def parse_size(text: str) -> int:
    """'5GB' → 5·10⁹ bytes (decimal units, as transformers' max_shard_size)."""
    import re

    from ..errors import LlamalabError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not m:
        raise LlamalabError(f"--max-shard-size {text!r}: expected a size such as 5GB, 500MB or 1000000")
    unit = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}[m[2]]
    return int(float(m[1]) * unit)


def run(args):
    import os
    import shutil
    import tempfile
    from pathlib import Path

    import torch

    from ..errors import LlamalabError
    from ..formats import load_state, load_tokenizer_for, save, tokenizer_source

    out = Path(args.out)
    if out.exists() and not args.force:
        raise LlamalabError(f"{out} already exists; pass --force to replace it")
    if args.shards < 1 or (args.shards > 1 and args.to != "meta"):
        raise LlamalabError("--shards N (N >= 1) applies to --to meta only")
    state, cfg, extra, fmt, path = load_state(args.src)
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else state["tok_embeddings.weight"].dtype
    options = {"hf": {"dtype": dtype, "max_shard_size": parse_size(args.max_shard_size)}, "meta": {"dtype": dtype, "shards": args.shards},
               "gguf": {"gguf_type": args.gguf_type or ("f16" if dtype == torch.float16 else "f32")}}[args.to]
    tokenizer_src = tokenizer_source(fmt, path)  # a directory's files are copied, a GGUF vocab copied verbatim
    if fmt == "gguf" and args.to != "gguf":  # already read with the tensors
        tokenizer_src = load_tokenizer_for(fmt, path, cfg.vocab_size, extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # same filesystem: rename is atomic
    try:
        target = tmp / out.name if args.to == "gguf" else tmp / "out"
        save(state, cfg, target, args.to, tokenizer_src=tokenizer_src, **options)
        if out.exists():  # --force
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out} ({args.to}, {sum(v.numel() for v in state.values()):,} params, from {fmt} {path})")
