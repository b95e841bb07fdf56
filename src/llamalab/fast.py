"""The compiled decode step: `torch.compile` of the model's one-token forward, where it pays.

Eager decoding of a small model is bound by per-op overhead (hundreds of small kernels per token);
inductor fuses the elementwise work (norms, rotary, SwiGLU, the cache writes) into a few kernels. On CPU
inductor generates C++, so it needs a compiler: without one we say so once and decode eagerly.
The first steps pay the compilation (tens of seconds), so it is opt-in (`--compile`).
"""

from __future__ import annotations

import os
import shutil
import sys

import torch

from .model import Transformer


def has_cxx_compiler() -> bool:
    """torch.compile on CPU generates C++: is there a compiler for it (CXX, else g++, c++, clang++)?"""
    return any(map(shutil.which, (os.environ.get("CXX", "g++"), "c++", "clang++")))


def compiled_step(model: Transformer):
    """`model`'s forward compiled for decode steps (one token per row, per-row positions), or the
    model itself, with a notice on stderr, where compiling cannot work (CPU without a C++ compiler)."""
    if model.norm.weight.device.type == "cpu" and not has_cxx_compiler():
        print("llamalab: no C++ compiler found (set CXX or install g++); decoding without torch.compile",
              file=sys.stderr)
        return model
    # dynamic: the attended length grows every step and the batch changes as slots fill and free
    return torch.compile(model, dynamic=True)
