"""Regenerate tests/data/kquant/ with llama.cpp's own quantizer (llama-cpp-python's `llama_model_quantize`).

    PYTHONPATH=src python scripts/kquant_reference.py [--check-smollm2]

1. tiny_reference.json: the float model of tests/kquant_source.py written as an F32 GGUF (our `formats.save`),
   quantized by llama.cpp to each file type; for every type the file's general.file_type and, per tensor,
   its GGML type and the sha256 of its bytes (the quantized files themselves are ~24 MB together, too big to
   keep). The sha256 of every source tensor is there too, so a test knows it starts from the same floats.
2. smollm2_q4_k_m_types.json: the type llama.cpp gives each tensor of SmolLM2-135M quantized to Q4_K_M
   (from an F32 GGUF of the test checkpoint's weights): its 576-wide rows take the fallbacks.
3. imatrix_reference.npz: small float matrices and importance matrices (seeded, stored as they are) and the
   blocks llama.cpp's `ggml_quantize_chunk(type, ..., imatrix)` writes for them, per type (Q2_K..Q6_K, Q4_0,
   Q4_1, Q5_0, Q5_1, Q8_0), called through ctypes on llama-cpp-python's libggml-base.
4. tiny_imatrix.gguf (an importance matrix for the tiny model: seeded values in llama-imatrix's GGUF format,
   written by `formats.imatrix`) and tiny_imatrix_reference.json: for Q2_K, Q3_K_M and Q4_K_M, the sha256
   of each tensor's blocks as `ggml_quantize_chunk` writes them at the type llama.cpp chose for it
   (tiny_reference.json) with the file's values (read back with the gguf package) where the file has an
   entry, without where it has none (the embedding, the output head), as llama.cpp's quantize does.
--check-smollm2 (not stored, not in CI): our `quantize --type q4_k_m` of the same F32 SmolLM2 byte-compared
with llama.cpp's, and both files' logits from llama.cpp on one prompt (llama.cpp loads ours).
Needs llama-cpp-python; each llama.cpp call runs in a process of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from gguf import GGUFReader  # noqa: E402

from llamalab import assets  # noqa: E402
from llamalab.formats import gguf as gguf_format  # noqa: E402
from llamalab.formats.gguf_mix import FILE_TYPES  # noqa: E402

OUT = ROOT / "tests" / "data" / "kquant"
TYPES = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "q8_0", "q4_0",
         "q4_1", "q5_0", "q5_1", "f16", "bf16"]
QUANTIZE = """
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread = int(sys.argv[3]), 2
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""


def llama_quantize(src: Path, out: Path, ftype: str) -> None:
    code = int(FILE_TYPES[ftype][0])
    subprocess.run([sys.executable, "-c", QUANTIZE, str(src), str(out), str(code)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tensor_table(path: Path) -> dict:
    reader = GGUFReader(path)
    return {t.name: [t.tensor_type.name, hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()]
            for t in reader.tensors}


def file_type(path: Path) -> int:
    return int(GGUFReader(path).fields["general.file_type"].contents())


def tiny(tmp: Path) -> None:
    from kquant_source import ARGS, source_state

    src = gguf_format.save(source_state(), ARGS, tmp / "tiny-f32.gguf", gguf_type="f32")
    table = {"source": {k: v[1] for k, v in tensor_table(src).items()}, "types": {}}
    for ftype in TYPES:
        out = tmp / f"tiny-{ftype}.gguf"
        llama_quantize(src, out, ftype)
        table["types"][ftype] = {"file_type": file_type(out), "tensors": tensor_table(out)}
        print(f"{ftype}: {out.stat().st_size:,} bytes")
    (OUT / "tiny_reference.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def smollm2(tmp: Path, check: bool) -> None:
    state, args, _ = gguf_format.load_state(assets.path("smollm2"))
    src = gguf_format.save(state, args, tmp / "smollm2-f32.gguf", gguf_type="f32", tokenizer_src=assets.path("smollm2"))
    theirs = tmp / "smollm2-llama.cpp-q4_k_m.gguf"
    llama_quantize(src, theirs, "q4_k_m")
    types = {name: kind for name, (kind, _) in tensor_table(theirs).items()}
    (OUT / "smollm2_q4_k_m_types.json").write_text(json.dumps(types, indent=1, sort_keys=True) + "\n")
    if check:
        ours = gguf_format.save(state, args, tmp / "smollm2-ours-q4_k_m.gguf", ftype="q4_k_m", tokenizer_src=src)
        a, b = tensor_table(ours), tensor_table(theirs)
        same = sum(a[k] == b[k] for k in b)
        print(f"SmolLM2 Q4_K_M: {same}/{len(b)} tensors byte-identical to llama.cpp's; file_type "
              f"{file_type(ours)} vs {file_type(theirs)}")
        for path in (theirs, ours):
            print(path.name, subprocess.run([sys.executable, "-c", LOGITS, str(path)], capture_output=True,
                                            text=True, check=True).stdout.strip())


LOGITS = """
import sys, hashlib, numpy as np, llama_cpp
m = llama_cpp.Llama(sys.argv[1], n_ctx=64, logits_all=True, verbose=False, n_threads=2)
m.eval(m.tokenize(b"The capital of France is", add_bos=True))
x = np.array(m.scores[:m.n_tokens], dtype=np.float32)
print("logits sha256", hashlib.sha256(x.tobytes()).hexdigest()[:16], "argmax", x[-1].argmax(), "sum", float(x.sum()))
"""


IMATRIX_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


def ggml_quantize_chunk():
    import ctypes
    import os

    import llama_cpp

    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_void_p]
    return f


def imatrix_cases() -> dict:
    """Rows of 768 (three super-blocks, 24 blocks of 32): normal values, one row of zeros, one with outliers,
    one all positive; importance values log-normal, one run of 16 zeros and a few single zeros."""
    rng = np.random.default_rng(33)
    x = rng.standard_normal((6, 768)).astype(np.float32) * np.float32(0.02)
    x[1] = 0
    x[2, rng.integers(0, 768, 12)] *= 40
    x[3] = np.abs(x[3]) + np.float32(0.01)
    im = np.exp(rng.standard_normal(768) * 1.5).astype(np.float32)
    im[32:48] = 0
    im[rng.integers(0, 768, 8)] = 0
    return {"x": x, "imatrix": im}


def imatrix_reference() -> None:
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q

    quantize = ggml_quantize_chunk()
    data = imatrix_cases()
    x, im = data["x"], data["imatrix"]
    for kind in IMATRIX_TYPES:
        block, size = GGML_QUANT_SIZES[Q[kind]]
        out = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
        quantize(int(Q[kind]), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], im.ctypes.data)
        data[kind] = out
    np.savez_compressed(OUT / "imatrix_reference.npz", **data)
    print(f"imatrix_reference.npz: {', '.join(IMATRIX_TYPES)}")


def check_read_by_ggml(path: Path) -> None:
    """ggml's own GGUF parser (gguf_init_from_file, as llama-quantize loads an imatrix) reads the file's keys."""
    import ctypes
    import os

    import llama_cpp

    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))

    class Params(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    lib.gguf_init_from_file.restype, lib.gguf_init_from_file.argtypes = ctypes.c_void_p, [ctypes.c_char_p, Params]
    lib.gguf_find_key.restype, lib.gguf_find_key.argtypes = ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]
    lib.gguf_get_val_u32.restype, lib.gguf_get_val_u32.argtypes = ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_n_tensors.restype, lib.gguf_get_n_tensors.argtypes = ctypes.c_int64, [ctypes.c_void_p]
    ctx = lib.gguf_init_from_file(str(path).encode(), Params(True, None))
    assert ctx, f"ggml cannot read {path}"
    keys = {k: lib.gguf_find_key(ctx, k.encode()) for k in ("imatrix.datasets", "imatrix.chunk_count",
                                                             "imatrix.chunk_size", "general.type")}
    assert min(keys.values()) >= 0, keys
    print(f"{path.name}: ggml reads {lib.gguf_get_n_tensors(ctx)} tensors, chunk_count "
          f"{lib.gguf_get_val_u32(ctx, keys['imatrix.chunk_count'])}")
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.gguf_free(ctx)


IMATRIX_FILE_TYPES = ["q2_k", "q3_k_m", "q4_k_m"]


def tiny_imatrix(tmp: Path) -> None:
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q

    from llamalab.formats.imatrix import write_imatrix

    src = gguf_format.save(__import__("kquant_source").source_state(), __import__("kquant_source").ARGS,
                           tmp / "tiny-f32.gguf", gguf_type="f32")
    floats = {t.name: np.array(t.data, np.float32) for t in GGUFReader(src).tensors}
    rng = np.random.default_rng(7)
    sums = {name: (np.exp(rng.standard_normal((1, w.shape[1]))).astype(np.float32) * np.float32(1000), [1000 + i])
            for i, (name, w) in enumerate(sorted(floats.items())) if name.startswith("blk.") and w.ndim == 2}
    write_imatrix(OUT / "tiny_imatrix.gguf", sums, datasets=["seeded"], chunk_count=2, chunk_size=512)
    check_read_by_ggml(OUT / "tiny_imatrix.gguf")
    reader = GGUFReader(OUT / "tiny_imatrix.gguf")
    tensors = {t.name: np.array(t.data, np.float32).reshape(-1) for t in reader.tensors}
    values = {n[:-8]: tensors[n] / tensors[n[:-8] + ".counts"][0] for n in tensors if n.endswith(".in_sum2")}
    quantize = ggml_quantize_chunk()
    reference = json.loads((OUT / "tiny_reference.json").read_text())["types"]
    table = {}
    for ftype in IMATRIX_FILE_TYPES:
        table[ftype] = {}
        for name, (kind, _) in reference[ftype]["tensors"].items():
            x = floats[name]
            if kind in ("F32", "F16"):
                continue
            block, size = GGML_QUANT_SIZES[Q[kind]]
            out = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
            im = values.get(name)
            quantize(int(Q[kind]), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
                     None if im is None else np.ascontiguousarray(im).ctypes.data)
            table[ftype][name] = [kind, hashlib.sha256(out.tobytes()).hexdigest()]
    (OUT / "tiny_imatrix_reference.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"tiny_imatrix_reference.json: {', '.join(IMATRIX_FILE_TYPES)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check-smollm2", action="store_true", help="also compare our Q4_K_M SmolLM2 with llama.cpp's")
    p.add_argument("--imatrix-only", action="store_true", help="regenerate imatrix_reference.npz only")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    imatrix_reference()
    if args.imatrix_only:
        with tempfile.TemporaryDirectory() as tmp:
            tiny_imatrix(Path(tmp))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tiny(Path(tmp))
        tiny_imatrix(Path(tmp))
        smollm2(Path(tmp), args.check_smollm2)


if __name__ == "__main__":
    main()
