"""llama.cpp (llama-cpp-python) as the reference: the pieces the benches and the test-file scripts share.

- `quantize(src, out, kind)`: `src` written as llama.cpp's file type `kind` ("Q4_K_M", "F16", ...: its
  LLAMA_FTYPE_MOSTLY_<kind>) by its own `llama_model_quantize`, default parameters (no importance matrix),
  into a temporary beside `out` renamed into place.
- `without_repacking()`: llama.cpp's CPU weight repacking ("extra buffer types") off for every model loaded
  after it; a build for some CPUs has been seen to segfault while repacking quantized weights.
- `smollm2_f32()`: the SmolLM2 asset converted to an F32 GGUF by `llamalab convert`, cached;
  `quantized_path(f32, kind)`: where the benches keep llama.cpp's `kind` of an F32 file (one copy for all).
Run llama.cpp in a process of its own: a crash then loses one row, not the bench.
"""

from __future__ import annotations

from pathlib import Path

from slice7b import CACHE  # a sibling script: the benches' one cache directory


def quantize(src: Path, out: Path, kind: str, threads: int = 1) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}"), threads
    tmp = Path(out).with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"llama_model_quantize failed for {kind}")
    tmp.rename(out)
    return Path(out)


def quantized_path(f32: Path, kind: str) -> Path:
    return f32.with_name(f32.name.replace("-f32.gguf", f".llama-cpp-{kind}.gguf"))


def without_repacking() -> None:
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params


def smollm2_f32() -> Path:
    from llamalab import assets
    from llamalab.cli import main

    f32 = CACHE / "smollm2-f32.gguf"
    if not f32.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        main(["convert", str(assets.path("smollm2")), "--to", "gguf", "--out", str(f32)])
    return f32
