"""The compiled decode step: `torch.compile` of the model's one-token forward, where it pays.

Eager decoding of a small model is bound by per-op overhead (hundreds of small kernels per token);
inductor fuses the elementwise work (norms, rotary, SwiGLU, the cache writes) into a few kernels.

At batch 1 every projection is a matrix-vector product: the step reads each weight once and does two
FLOPs per weight, so its speed is the memory's read bandwidth. BLAS GEMV does not get there on every
CPU (MKL's fp32 GEMV reads ~11 GB/s on a 2-core AMD EPYC that streams ~27 GB/s; bench/decode.py prints
both), so on CPU we let inductor rewrite one-row float matmuls as a fused multiply-and-sum over each
weight row (its `decompose_mm_pass`), which it vectorizes and parallelizes over rows: the weights are
streamed once at close to the read bandwidth. Batches of more rows keep the BLAS GEMM, which reuses each
weight for every row; the quantized layers keep their own kernels (see `quant.linear`). Models loaded through
the runtime already run their float projections on our bandwidth-bound kernel (`quant.float_linear`, an op
the compiled graph calls as it is); the rewrite applies where that kernel is off (LLAMALAB_FLOAT_KERNEL=0).

On CPU inductor generates C++, so it needs a compiler: without one we say so once and decode eagerly.
The first steps pay the compilation (tens of seconds), so it is opt-in (`--compile`).
"""

from __future__ import annotations

import sys

import torch

from .device import has_cxx_compiler
from .model import Transformer

# One-row matmuls on CPU as fused multiply-and-sum, of any width (the default stops at 2048 columns, which
# would leave out a LLaMA output head); more than one row is never rewritten.
WIDEST = 1 << 31
DECODE_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {
    "cpu_max_first_dimension_decomposition": 1, "cpu_max_other_dimension_decomposition": WIDEST}}}


def _widen_decomposition() -> None:
    """Inductor reads the pass's width limit once, when the pass module is first imported, so options given
    later do not reach it: set it on the module. It only matters where the pass is enabled, i.e. in graphs
    compiled with DECODE_OPTIONS."""
    try:
        from torch._inductor.fx_passes import decompose_mem_bound_mm as decompose
    except ImportError:  # another torch: its defaults stand (the head keeps BLAS)
        return
    if hasattr(decompose, "cpu_max_other_dimension_decomposition"):
        decompose.cpu_max_other_dimension_decomposition = WIDEST


def compiled_step(model: Transformer):
    """`model`'s forward compiled for decode steps (one token per row, per-row positions), or the
    model itself, with a notice on stderr, where compiling cannot work (CPU without a C++ compiler)."""
    cpu = model.norm.weight.device.type == "cpu"
    if cpu and not has_cxx_compiler():
        print("llamalab: no C++ compiler found (set CXX or install g++); decoding without torch.compile",
              file=sys.stderr)
        return model
    if cpu:
        _widen_decomposition()
    # dynamic: the attended length grows every step and the batch changes as slots fill and free
    # (a batch of one is still specialized: dynamo treats sizes 0 and 1 as constants)
    return torch.compile(model, dynamic=True, options=DECODE_OPTIONS if cpu else None)
