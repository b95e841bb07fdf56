"""The float GEMV kernel against torch's matmul, per weight dtype and number of activation rows.

    python bench/float_kernel.py [--shape 11008 4096] [--rows 1 2 4 8 12 16 32 512]

For each dtype (float32, bfloat16, float16) and M: `torch.ops.llamalab.float_linear` (the kernel below
GEMM_ROWS rows, the GEMM above) and `F.linear` on the float32 weight, milliseconds per call (median), and
the kernel's read rate in GB/s (weight bytes / time). GEMM_ROWS in float_linear.cpp is where the kernel
stops beating a GEMM.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from llamalab.quant import cpu_kernel


def ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=[11008, 4096], metavar=("N", "K"))
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 32, 512])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    assert cpu_kernel.available(), "the CPU kernels could not be built"
    N, K = args.shape
    w32 = torch.randn(N, K)
    print(f"W {N}x{K}, threads {torch.get_num_threads()}")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        w = w32.to(dtype)
        for m in args.rows:
            x = torch.randn(m, K)
            ours = ms(lambda: torch.ops.llamalab.float_linear(x, w), args.rounds)
            ref = ms(lambda: F.linear(x, w32), args.rounds)
            print(f"{str(dtype):15s} M {m:4d}  ours {ours:8.2f} ms ({w.nbytes / ours / 1e6:5.1f} GB/s)  "
                  f"F.linear fp32 {ref:8.2f} ms  ratio {ref / ours:5.2f}", flush=True)


if __name__ == "__main__":
    main()
