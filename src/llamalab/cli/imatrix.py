from .common import add_threads_argument
from .types import positive_int

HELP = ("Compute a model's importance matrix on calibration text (llama.cpp's llama-imatrix: per weight matrix the "
        "mean square of its input columns), for `quantize --type ... --imatrix FILE`.")


def add_arguments(p):
    p.add_argument("--model", required=True, help="checkpoint: .gguf file, HF or Meta directory, hub id, or a "
                   "library name (the model the importance matrix is for; run in float32)")
    p.add_argument("--calibration", metavar="FILE|corpus", default="corpus",
                   help="calibration text: a UTF-8 file, or 'corpus' (the embedded demo prose, its first document "
                        "held out; the default)")
    p.add_argument("--chunks", type=positive_int, metavar="N",
                   help="chunks of --ctx tokens to run (default: all of a file; 64 of the corpus)")
    p.add_argument("--ctx", type=positive_int, default=512, metavar="N", help="tokens per chunk (default 512)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--out", required=True, metavar="FILE", help="the importance matrix: llama.cpp's imatrix GGUF")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_threads_argument(p)


def run(args):
    from llamalab.imatrix import compute_imatrix

    out = compute_imatrix(args.model, args.out, calibration=args.calibration, chunks=args.chunks, ctx=args.ctx,
                          device=args.device, force=args.force)
    print(f"wrote {out}")
