import resource
import time

from .common import add_threads_argument
from .types import positive_float, positive_int

HELP = ("Quantize a float checkpoint's weights: a llama.cpp file type (--type q4_k_m, q6_k, q8_0, ...: GGUF as "
        "llama.cpp writes it), round to nearest (8 or 4 bits: GGUF Q8_0 / Q4_1 / Q4_0, or a safetensors directory "
        "of group codes) or GPTQ, calibrated (4, 3 or 8 bits: a directory in the GPTQ layout).")


def add_arguments(p):
    p.add_argument("--model", required=True, help="float checkpoint: .gguf file, HF or Meta directory, hub id, or a library name")
    p.add_argument("--method", choices=("rtn", "gptq"), default="rtn",
                   help="rtn: round to nearest (default); gptq: GPTQ on calibration text (writes the GPTQ layout)")
    p.add_argument("--type", metavar="TYPE", help="a llama.cpp file type, GGUF output: q4_k_m, q5_k_m, q6_k, q8_0, "
                   "q4_0, q4_1, f16, bf16 (also q2_k, q3_k_s/m/l, q4_k_s, q5_k_s, q5_0, q5_1, f32), each tensor "
                   "at the type llama.cpp's quantize gives it")
    p.add_argument("--imatrix", metavar="FILE",
                   help="with --type: an importance matrix (`llamalab imatrix`, or llama.cpp's imatrix .gguf / .dat) "
                        "that weighs the rounding, as llama.cpp's quantize --imatrix does")
    p.add_argument("--bits", type=positive_int,
                   help="rtn: 8 (Q8_0) or 4 (Q4_1; Q4_0 with --symmetric; the embedding at Q8_0); gptq: 4, 3 or 8")
    p.add_argument("--group-size", type=positive_int, metavar="G",
                   help="weights per scale: 32, 64 or 128 (rtn default 32, GGUF takes 32 only; gptq default 128)")
    p.add_argument("--symmetric", "--sym", action="store_true",
                   help="no per-group minimum/zero point (rtn: Q4_0; gptq: zero 2^(bits-1))")
    p.add_argument("--act-order", action="store_true",
                   help="gptq: columns in descending Hessian diagonal (desc_act, g_idx)")
    p.add_argument("--mse", action="store_true",
                   help="gptq: each group's range shrunk to the least rounding error (GPTQ's mse grid), not min/max")
    p.add_argument("--calibration", metavar="FILE|corpus",
                   help="gptq: calibration text, a UTF-8 file or 'corpus' (the embedded demo prose, its first "
                        "document held out)")
    p.add_argument("--samples", type=positive_int, help="gptq: calibration windows (default 128)")
    p.add_argument("--seq-len", type=positive_int, help="gptq: tokens per window (default 512)")
    p.add_argument("--damp", type=positive_float,
                   help="gptq: dampening, a fraction of the Hessian's mean diagonal (default 0.01, the paper's)")
    p.add_argument("--out", required=True,
                   help="output: a .gguf file, or a directory (HF-style safetensors with scales; GPTQ's layout)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_threads_argument(p)


def run(args):
    from llamalab.quantize import quantize_checkpoint

    start = time.perf_counter()
    gptq = {k: v for k, v in dict(act_order=args.act_order, mse=args.mse, calibration=args.calibration,
                                  samples=args.samples, seq_len=args.seq_len, damp=args.damp).items() if v not in (None, False)}
    if args.method == "gptq":
        gptq.setdefault("calibration", "corpus")
    out = quantize_checkpoint(args.model, args.out, bits=args.bits, group_size=args.group_size, file_type=args.type,
                              imatrix=args.imatrix, symmetric=args.symmetric, force=args.force, method=args.method, **gptq)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else out.stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    print(f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s, peak memory {peak:.0f} MB")
