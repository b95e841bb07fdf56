"""GGUF (llama.cpp): one file holding metadata key/values and (possibly quantized) tensors.

llama.cpp keeps Meta's interleaved q/k rotary layout, so tensors map 1:1 onto ours by name only;
quantized blocks (Q8_0, Q4_0, Q4_1, ...) are dequantized with the `gguf` package.
GGUF stores shapes innermost-first; the reader hands us numpy arrays already in (out, in) order.

The file is memory-mapped copy-on-write, as llama.cpp maps it: F32, F16 and BF16 tensors and the blocks of
the K-quants / Q5_0 / Q5_1 (`quant.GGMLBlocks`) are tensors over the map's pages themselves (no copy; the
pages are read from the file as the first forward pass touches them, and a write, say by training, lands in
a private page of this process, never in the file). A tensor whose layout differs from the file's (Q8_0 /
Q4_0 / Q4_1 codes, anything dequantized) is converted one tensor at a time and its pages of the map are
handed back at once (`_release`), so a load never holds the file and the converted model both.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGUFWriter, LlamaFileType, RopeScalingType
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from gguf.quants import dequantize, quantize
from tqdm import tqdm

from ..atomic import staged_file
from ..config import ModelArgs
from ..errors import LlamalabError
from ..quant import BLOCK_TYPES, GGUF_TYPES, GroupCodes, from_gguf
from ..quant import ggml as ggml_blocks
from ..quant.codes import to_gguf as to_gguf_blocks
from ..tokenizer import find_tokenizer, open_gguf
from .gguf_mix import FILE_TYPES, check_file_type, encode, tensor_types
from .names import name_maps
from .output import check_output

to_ours, to_gguf = name_maps("gguf")


def read_metadata(path: Path, reader=None) -> dict:
    """All key/values except the large tokenizer arrays (tokens, scores, merges, types).
    float32 values come back as their shortest decimal (1e-05, not 9.999999747378752e-06)."""
    reader = reader or open_gguf(path)
    big = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.merges",
           "tokenizer.ggml.token_type"}
    meta = {}
    for k, f in reader.fields.items():
        if k in big or k.startswith("GGUF."):
            continue
        value = f.contents()
        meta[k] = float(str(np.float32(value))) if f.types == [V.FLOAT32] else value
    return meta


def args_from_metadata(meta: dict, path: Path, vocab_size: int) -> ModelArgs:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise LlamalabError(f"{path}: GGUF architecture is {arch!r}; only 'llama' is supported")

    def need(key):
        if f"llama.{key}" not in meta:
            raise LlamalabError(f"{path}: GGUF metadata lacks 'llama.{key}'")
        return meta[f"llama.{key}"]

    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise LlamalabError(f"{path}: rope scaling {scaling!r} is not supported (only linear)")
    rope_scaling = None
    if scaling == "linear":  # position interpolation: llama.cpp's freq_scale = 1 / factor
        factor = need("rope.scaling.factor")
        if not isinstance(factor, (int, float)) or not 1 <= factor <= 1024:
            raise LlamalabError(f"{path}: GGUF metadata: rope.scaling.factor {factor!r} is not a number in [1, 1024]")
        rope_scaling = {"rope_type": "linear", "factor": float(factor)}
    try:
        args = ModelArgs(
            dim=need("embedding_length"),
            n_layers=need("block_count"),
            n_heads=need("attention.head_count"),
            n_kv_heads=meta.get("llama.attention.head_count_kv"),
            vocab_size=meta.get("llama.vocab_size", vocab_size),
            ffn_dim=need("feed_forward_length"),
            norm_eps=need("attention.layer_norm_rms_epsilon"),
            rope_theta=meta.get("llama.rope.freq_base", 10000.0),
            rope_scaling=rope_scaling,
            max_seq_len=meta.get("llama.context_length", 2048),
            tie_embeddings=False,  # set by the caller from the tensors present
        )
    except LlamalabError as e:
        raise LlamalabError(f"{path}: GGUF metadata: {e}") from None
    rope_dims = meta.get("llama.rope.dimension_count", args.head_dim)
    if rope_dims != args.head_dim:
        raise LlamalabError(f"{path}: partial rotary (rope.dimension_count {rope_dims} "
                            f"< head_dim {args.head_dim}) is not supported")
    return args


def _shape(t) -> tuple[int, ...]:
    return tuple(int(s) for s in reversed(t.shape))  # GGUF shapes are innermost-first


def _to_torch(t) -> torch.Tensor:
    """The tensor `t`: F32 / F16 / BF16 a view of the file's map (writable only in a copy-on-write map),
    anything else dequantized to float32."""
    shape = _shape(t)
    if t.tensor_type in (Q.F32, Q.F16, Q.BF16) and t.data.flags.writeable:
        w = torch.from_numpy(t.data.view(np.ndarray))  # BF16: the raw bytes, reinterpreted
        return (w.view(torch.bfloat16) if t.tensor_type == Q.BF16 else w).reshape(shape)
    if t.tensor_type in (Q.F32, Q.F16):
        array = np.array(t.data)  # copy out of a read-only map
    else:
        try:
            array = dequantize(t.data, t.tensor_type)  # float32; exact for BF16
        except NotImplementedError:
            raise LlamalabError(f"tensor {t.name}: GGUF type {t.tensor_type.name} cannot be dequantized "
                                "by the installed gguf package") from None
    w = torch.from_numpy(np.ascontiguousarray(array)).reshape(shape)
    return w.to(torch.bfloat16) if t.tensor_type == Q.BF16 else w


def _meta_tensor(t) -> torch.Tensor:
    """Shape and (dequantized) dtype only, on the meta device."""
    dtype = {Q.F16: torch.float16, Q.BF16: torch.bfloat16}.get(t.tensor_type, torch.float32)
    return torch.empty(_shape(t), dtype=dtype, device="meta")


def _release(reader, t) -> None:
    """Hand the map's pages of tensor `t` (converted: its copy is what runs) back, so that they leave this
    process's resident memory now rather than when the map closes. Only pages wholly inside the tensor."""
    mm = getattr(reader.mapped, "_mmap", None)  # open_gguf's reader keeps the np.memmap
    if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = -(-int(t.data_offset) // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (int(t.data_offset) + int(t.n_bytes)) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)


def _read_tensor(t, quantized: bool):
    """Tensor `t` as it runs: a view of the map where the layout is the file's, else converted."""
    shape = _shape(t)
    if quantized and t.tensor_type.name in GGUF_TYPES and len(t.shape) == 2:
        return from_gguf(t.data, t.tensor_type.name, shape)
    if quantized and t.tensor_type.name in BLOCK_TYPES and len(t.shape) == 2:
        return ggml_blocks.from_gguf(t.data, t.tensor_type.name, shape, t.name)
    return _to_torch(t)


def _is_view(value, reader) -> bool:
    """Does `value` (a tensor or GGMLBlocks) hold the map's own bytes?"""
    data = getattr(value, "data", value)
    lo = reader.data.ctypes.data
    return isinstance(data, torch.Tensor) and lo <= data.data_ptr() < lo + reader.data.size


def load_state(path, *, lazy: bool = False, quantized: bool = False) -> tuple[dict[str, torch.Tensor], ModelArgs, dict]:
    """Read a llama GGUF into our state dict (dequantized; F32/F16/BF16 keep their dtype, as views of the
    file's copy-on-write map). lazy: tensors on the meta device (shapes and dtypes only, nothing read).
    quantized: Q8_0/Q4_0/Q4_1 matrices stay quantized, as `llamalab.quant.GroupCodes`; K-quants (Q2_K..Q6_K)
    and Q5_0/Q5_1 ones as their raw blocks, `llamalab.quant.GGMLBlocks` (views of the map)."""
    path = Path(path)
    reader = open_gguf(path, "r" if lazy else "c")
    meta = read_metadata(path, reader)
    state, unknown, qtypes = {}, [], {}
    for t in reader.tensors:
        name = to_ours(t.name)
        if name is None:
            unknown.append(t.name)
            continue
        try:
            state[name] = _meta_tensor(t) if lazy else _read_tensor(t, quantized)
            if not lazy and not _is_view(state[name], reader):
                _release(reader, t)
        except (ValueError, IndexError) as e:
            raise LlamalabError(f"{path}: tensor {t.name} is damaged ({e}); is the file truncated?") from None
        qtypes[name] = t.tensor_type.name
    if unknown:
        raise LlamalabError(f"{path}: unsupported GGUF tensors {unknown[:5]} (llama architecture only)")
    if "tok_embeddings.weight" not in state:
        raise LlamalabError(f"{path}: GGUF file has no token_embd.weight; it holds no model weights")
    args = args_from_metadata(meta, path, state["tok_embeddings.weight"].shape[0])
    args = args.replace(tie_embeddings="output.weight" not in state)
    tokenizer_fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    return state, args, {"metadata": meta, "tensor_types": qtypes, "tokenizer_fields": tokenizer_fields}


# ---------------------------------------------------------------------------------------------- write

def _encode(w: torch.Tensor, gguf_type: str):
    """numpy data + GGML type for one tensor. Norms (1-D) stay F32, as llama.cpp does. `GroupCodes`
    (GPTQ's, `quantize --method gptq --out X.gguf`) are written as they are, as the block type they fit."""
    if isinstance(w, GroupCodes):
        data, kind = to_gguf_blocks(w)
        return data, Q[kind]
    array = w.detach().to(torch.float32).cpu().numpy()
    if w.ndim == 1 or gguf_type == "f32":
        return array, Q.F32
    if gguf_type == "f16":
        return array.astype(np.float16), Q.F16
    if gguf_type in ("q8_0", "q4_0", "q4_1"):
        if array.shape[-1] % 32:
            return array.astype(np.float16), Q.F16  # quantized types need rows in blocks of 32
        kind = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}[gguf_type]
        return quantize(array, kind), kind
    raise ValueError(gguf_type)


def _add_tokenizer(writer, tokenizer_src):
    """tokenizer.* metadata: copied verbatim from a source GGUF file, else described by the Tokenizer."""
    if isinstance(tokenizer_src, (str, Path)) and Path(tokenizer_src).suffix == ".gguf":
        for key, f in open_gguf(Path(tokenizer_src)).fields.items():
            if key.startswith("tokenizer."):
                sub = f.types[-1] if f.types[0] == V.ARRAY else None
                writer.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
        return
    tokenizer = find_tokenizer(tokenizer_src)
    if tokenizer is None:
        return
    for key, value in tokenizer.gguf_metadata().items():
        if isinstance(value, list):
            sub = V.STRING if isinstance(value[0], str) else V.FLOAT32 if isinstance(value[0], float) else V.INT32
            writer.add_key_value(key, value, V.ARRAY, sub_type=sub)
        else:
            vtype = (V.BOOL if isinstance(value, bool) else V.UINT32 if isinstance(value, int)
                     else V.FLOAT32 if isinstance(value, float) else V.STRING)
            writer.add_key_value(key, value, vtype)


def _add_tensors(writer, state, args: ModelArgs, gguf_type: str, ftype: str | None, imatrix: dict) -> None:
    """Every tensor, in GGUF's names: with `ftype`, each at the type llama.cpp gives it in such a file
    (`gguf_mix`; quantized with its importance values where `imatrix` has them), a progress bar over the
    tensors; else every matrix at `gguf_type`."""
    state = {k: w for k, w in state.items() if not (k == "output.weight" and args.tie_embeddings)}  # llama.cpp
    names = {}  # reuses token_embd.weight when output.weight is absent
    for key in state:
        names[key] = to_gguf(key)
        if names[key] is None:
            raise LlamalabError(f"cannot write tensor {key!r} to GGUF: not a llama parameter")
    types = None
    if ftype is not None:
        shapes = {names[k]: tuple(w.shape) for k, w in state.items()}
        types = tensor_types(shapes, ftype, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.kv_heads)
    show = ftype is not None and sum(w.numel() for w in state.values()) > 50_000_000  # seconds: show progress
    for key, w in tqdm(state.items(), desc=f"quantizing to {ftype}", unit="tensor", disable=not show):
        if types is not None and not isinstance(w, GroupCodes):
            qtype = types[names[key]]
            data = encode(w.detach().to(torch.float32).cpu().numpy(), qtype, imatrix.get(names[key]))
        else:  # 4-bit files keep the embedding (the output head too, when tied) at Q8_0
            embedding = key in ("tok_embeddings.weight", "output.weight")
            data, qtype = _encode(w, "q8_0" if gguf_type in ("q4_0", "q4_1") and embedding else gguf_type)
        raw = qtype if data.dtype == np.uint8 else None  # uint8: quantized blocks (BF16 too)
        writer.add_tensor(names[key], data, raw_dtype=raw)


def save(state: dict[str, torch.Tensor], args: ModelArgs, out, *, gguf_type: str = "f32",
         tokenizer_src=None, name: str | None = None, force: bool = False, ftype: str | None = None,
         imatrix: dict | None = None) -> Path:
    """Write a llama GGUF that llama.cpp and `gguf.GGUFReader` read, atomically (`force` replaces an
    existing GGUF file, see `output`).

    gguf_type: every matrix at f32 | f16 | q8_0 | q4_0 | q4_1 (4-bit files keep the embedding at Q8_0).
    ftype: instead, one of llama.cpp's file types (`gguf_mix.FILE_TYPES`: q4_k_m, q6_k, q8_0, bf16, ...), each
    tensor at the type llama.cpp's `quantize` gives it, and general.file_type as llama.cpp writes it.
    imatrix: with ftype, {GGUF tensor name: importance values} (`imatrix.imatrix_for`) for the rounding.
    tokenizer_src: a GGUF file whose tokenizer.* metadata is copied, or a Tokenizer / tokenizer directory
    (None: the file carries no vocabulary).
    """
    file_types = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0,
                  "q4_0": LlamaFileType.MOSTLY_Q4_0, "q4_1": LlamaFileType.MOSTLY_Q4_1}
    if gguf_type not in file_types:
        raise LlamalabError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(file_types)}")
    if ftype is not None:
        ftype = check_file_type(ftype)
    kind = (args.rope_scaling or {}).get("rope_type", (args.rope_scaling or {}).get("type"))
    if args.rope_scaling and kind != "linear":
        raise LlamalabError(f"writing {kind} rope scaling to GGUF is not supported (llama.cpp wants a rope_freqs "
                            f"tensor); linear scaling is")
    check_output(out, "gguf", force=force)
    for key in ("max_seq_len", "dim", "n_layers", "hidden_dim", "n_heads", "kv_heads", "vocab_size"):
        if getattr(args, key) >= 1 << 32:  # GGUF's header fields are uint32
            raise LlamalabError(f"{key} {getattr(args, key):,} does not fit GGUF's 32-bit header field; "
                                f"it must be below 2**32 (a damaged config?)")
    out = Path(out)
    with staged_file(out) as tmp:
        writer = GGUFWriter(tmp, "llama")
        writer.add_name(name or out.stem)
        writer.add_context_length(args.max_seq_len)
        writer.add_embedding_length(args.dim)
        writer.add_block_count(args.n_layers)
        writer.add_feed_forward_length(args.hidden_dim)
        writer.add_head_count(args.n_heads)
        writer.add_head_count_kv(args.kv_heads)
        writer.add_rope_dimension_count(args.head_dim)
        writer.add_rope_freq_base(args.rope_theta)
        if kind == "linear":  # position interpolation: llama.cpp's freq_scale = 1 / factor
            writer.add_rope_scaling_type(RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(args.rope_scaling["factor"]))
        writer.add_layer_norm_rms_eps(args.norm_eps)
        writer.add_vocab_size(args.vocab_size)
        writer.add_file_type(FILE_TYPES[ftype][0] if ftype else file_types[gguf_type])
        writer.add_quantization_version(GGML_QUANT_VERSION)
        if tokenizer_src is not None:
            _add_tokenizer(writer, tokenizer_src)
        _add_tensors(writer, state, args, gguf_type, ftype, imatrix or {})
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out
