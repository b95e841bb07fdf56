from .common import add_threads_argument
from .types import positive_int

HELP = ("Quantize a float checkpoint's weights to 8 or 4 bits: GGUF Q8_0 / Q4_1 / Q4_0 (run by llamalab and "
        "llama.cpp) or a safetensors directory of group codes (group size 32, 64 or 128).")


def add_arguments(p):
    p.add_argument("--model", required=True, help="float checkpoint: .gguf file, HF or Meta directory, or hub id")
    p.add_argument("--bits", type=positive_int, required=True, help="8 (Q8_0) or 4 (Q4_1; Q4_0 with --symmetric)")
    p.add_argument("--group-size", type=positive_int, metavar="G", help="weights per scale: 32 (default), 64 or 128; GGUF takes 32 only")
    p.add_argument("--symmetric", action="store_true", help="4 bits without a per-block minimum (Q4_0)")
    p.add_argument("--out", required=True, help="output: a .gguf file, or a directory (HF-style safetensors with scales)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_threads_argument(p)


def run(args):
    from llamalab.quantize import quantize_checkpoint

    out = quantize_checkpoint(args.model, args.out, bits=args.bits, group_size=args.group_size,
                              symmetric=args.symmetric, force=args.force)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
