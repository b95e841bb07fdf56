"""The package's CPU kernels (`torch.ops.llamalab.*`, every `*.cpp` beside this file, one shared library),
built on first use. `int8_linear.cpp`: the matmul of group-wise int8 codes; `float_linear.cpp`: the matmul of
float32 / bfloat16 / float16 weights at batch sizes of decoding (`quant.float_linear`); `ggml_linear.cpp`: the
matmul of GGUF K-quant / Q5_0 / Q5_1 blocks as they are in the file (llama.cpp's arithmetic), and their row
dequantization.

PyTorch ships no CPU kernel for group-wise int8 weights (its int8 one is per-channel; routed through its int4
one, as two nibbles, Q8_0 decoded at ~0.6× llama.cpp). `int8_linear.cpp` does llama.cpp's integer dot products.
It is compiled once per CPU type with the C++ compiler torch.compile uses (`-march=native`: VNNI where the
CPU has it), cached under ~/.cache/llamalab/kernels (or $LLAMALAB_CACHE/kernels) and loaded as a torch op,
so compiled graphs call it like an aten kernel. Without a compiler, or if the build
fails, `available()` is False (with one notice on stderr) and `QuantLinear` runs int8 codes through PyTorch's
int4 kernel instead and float layers run through PyTorch's matmul (16-bit weights widened to float32 on load);
LLAMALAB_CPU_KERNEL=0 chooses those paths deliberately.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..device import cxx_compiler

# Each source registers its ops with TORCH_LIBRARY_FRAGMENT(llamalab, m); FAKES gives each op its output shape
# for compiled graphs (an op missing here cannot be traced).
SOURCES = sorted(Path(__file__).parent.glob("*.cpp"))
FAKES = {
    "int8_linear": lambda x, q, *_: x.new_empty(x.shape[0], q.shape[0]),
    "float_linear": lambda x, w: x.new_empty(x.shape[0], w.shape[0]),
    "ggml_linear": lambda x, w, *_: x.new_empty(x.shape[0], w.shape[0]),
    "ggml_dequantize": lambda w, type, K: w.new_empty(w.shape[0], K, dtype=torch.float32),
    "ggml_gemm": lambda x, w, *_: x.new_empty(x.shape[0], w.shape[0]),
    "int8_gemm": lambda x, q, *_: x.new_empty(x.shape[0], q.shape[0]),
}


def _cpu() -> str:
    """What the build depends on beyond the source: the CPU's model and instruction-set flags."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in info if line.split(":")[0].strip() in
                                  ("model name", "flags", "Features", "CPU part")}))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _cache_dir() -> Path:
    return Path(os.environ.get("LLAMALAB_CACHE") or Path.home() / ".cache" / "llamalab") / "kernels"


def _command(cxx: str, out: Path, march: str) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    lib = Path(torch.__file__).parent / "lib"
    # this machine's instructions (VNNI where present); torch's own OpenMP runtime, already loaded
    native = [] if sys.platform == "darwin" else [f"-march={march}", "-fopenmp"]
    return [cxx, *map(str, SOURCES), "-o", str(out), "-shared", "-fPIC", "-O3", "-std=c++17", *native,
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            *(f"-I{p}" for p in include_paths()), f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu"]


def _build(cxx: str, march: str = "native") -> Path:
    """The shared library for this source, compiler, torch and CPU type: from the cache, else compiled
    into a temporary file and renamed into place (concurrent builds each write whole files). `march`: the
    instruction set (the tests build the AVX2 and the portable variants too)."""
    key = hashlib.sha256(b"\0".join(s.encode() for s in (
        *(p.read_text() for p in SOURCES), cxx, torch.__version__, _cpu(), march))).hexdigest()[:16]
    lib = _cache_dir() / f"llamalab-kernels-{key}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    print("llamalab: compiling the CPU kernels for the weights' matrix products (once per machine, ~20 s)", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(dir=lib.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        run = subprocess.run(_command(cxx, Path(tmp), march), capture_output=True, text=True)
        if run.returncode:
            last = (run.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"{Path(cxx).name} exited with status {run.returncode}: {last}")
        os.replace(tmp, lib)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return lib


@functools.cache
def available() -> bool:
    """Are the `torch.ops.llamalab` kernels loaded (building them if needed)?"""
    if os.environ.get("LLAMALAB_CPU_KERNEL", "1") == "0":
        return False
    cxx = cxx_compiler()
    if cxx is None:
        print("llamalab: no C++ compiler found (set CXX or install g++); float and int8 layers run through "
              "PyTorch's slower kernels", file=sys.stderr)
        return False
    try:
        torch.ops.load_library(_build(cxx))
    except (OSError, RuntimeError) as e:
        print(f"llamalab: could not build the CPU kernels ({e}); float and int8 layers run through PyTorch's "
              "slower kernels", file=sys.stderr)
        return False

    for op, fake in FAKES.items():
        torch.library.register_fake(f"llamalab::{op}", fake)
    return True
