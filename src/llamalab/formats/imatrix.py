"""llama.cpp's importance-matrix files: the GGUF format `llama-imatrix` writes, and its legacy `.dat` format.

GGUF (written and read): `general.type` "imatrix"; `imatrix.datasets` (the calibration sources),
`imatrix.chunk_count` and `imatrix.chunk_size` (uint32); per weight matrix `<tensor>.in_sum2` (F32, one row
of sums of squared inputs per input column for each of its matrices: experts) and `<tensor>.counts` (F32, the
tokens each matrix saw), names sorted.
Legacy `.dat` (read): int32 entry count, then per entry an int32 name length, the name, int32 ncall, int32
nval and nval float32 (mean squares × ncall); optionally int32 chunk count, int32 length and the dataset name.

`read_imatrix` gives each tensor's values as llama.cpp's `quantize` uses them: in_sum2 / count (1 where a
matrix saw no tokens), the legacy values / ncall. Damaged or hostile files are one `LlamalabError` line.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ..atomic import staged_file
from ..errors import LlamalabError
from ..tokenizer import open_gguf

SUMS, COUNTS, MEANS = ".in_sum2", ".counts", ".in_sum"
MAX_NAME = 4096


@dataclass
class Imatrix:
    """Per tensor (GGUF name) its importance values, float32 of length columns × matrices."""
    values: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int | None = None  # None: a legacy file (which does not store it)
    format: str = "gguf"


def write_imatrix(path, sums: dict[str, tuple[np.ndarray, np.ndarray]], *, datasets: list[str], chunk_count: int,
                  chunk_size: int) -> Path:
    """Write `sums` {tensor: (in_sum2 (matrices, columns), counts (matrices,))} as llama-imatrix's GGUF, atomically."""
    path = Path(path)
    with staged_file(path) as tmp:
        writer = GGUFWriter(tmp, "")
        writer.kv_data[0].pop("general.architecture", None)  # llama-imatrix writes none
        writer.add_string("general.type", "imatrix")
        writer.add_array("imatrix.datasets", list(datasets))
        writer.add_uint32("imatrix.chunk_count", int(chunk_count))
        writer.add_uint32("imatrix.chunk_size", int(chunk_size))
        for name in sorted(sums):
            s, c = sums[name]
            s = np.asarray(s, np.float32).reshape(len(c), -1)
            writer.add_tensor(name + SUMS, s)
            writer.add_tensor(name + COUNTS, np.asarray(c, np.float32).reshape(len(c), 1))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def read_imatrix(path) -> Imatrix:
    """An importance-matrix file (GGUF or legacy `.dat`, told apart by the GGUF magic)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise LlamalabError(f"--imatrix {path}: cannot read it ({e.strerror or e})") from None
    return _checked(path, _read_gguf(path) if magic == b"GGUF" else _read_legacy(path))


def _bad(path, what: str) -> LlamalabError:
    return LlamalabError(f"--imatrix {path}: {what}; give a file written by `llamalab imatrix` or llama.cpp's "
                         "llama-imatrix")


def _field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def _read_gguf(path: Path) -> Imatrix:
    reader = open_gguf(path)  # the header is checked against the file's size first
    kind = _field(reader, "general.type")
    if kind != "imatrix" and _field(reader, "imatrix.chunk_count") is None:
        raise _bad(path, f"a GGUF file but not an importance matrix (general.type {kind!r}; a model?)")
    tensors = {t.name: t for t in reader.tensors}
    values = {}
    for name in sorted(n[:-len(SUMS)] for n in tensors if n.endswith(SUMS)):
        s, c = tensors[name + SUMS], tensors.get(name + COUNTS)
        if c is None:
            raise _bad(path, f"mismatched sums and counts for {name} (no {name}{COUNTS})")
        if s.tensor_type != GGMLQuantizationType.F32 or c.tensor_type != GGMLQuantizationType.F32:
            raise _bad(path, f"{name}: in_sum2 and counts must be F32, got {s.tensor_type.name}, {c.tensor_type.name}")
        sums = np.asarray(s.data, np.float32)
        sums = sums.reshape(-1, sums.shape[-1]) if sums.ndim else sums.reshape(1, 1)
        counts = np.asarray(c.data, np.float32).reshape(-1)
        if len(counts) != sums.shape[0]:
            raise _bad(path, f"{name}: {len(counts)} counts for {sums.shape[0]} matrices of sums")
        safe = np.where(counts > 0, counts, np.float32(1))[:, None]
        values[name] = np.where(counts[:, None] > 0, sums / safe, np.float32(1)).astype(np.float32).reshape(-1)
    orphans = sorted(n for n in tensors if n.endswith(COUNTS) and n[:-len(COUNTS)] not in values)
    if orphans:
        raise _bad(path, f"mismatched sums and counts: {orphans[0]} has no {SUMS}")
    datasets = _field(reader, "imatrix.datasets") or []
    return Imatrix(values, [str(d) for d in datasets], int(_field(reader, "imatrix.chunk_count") or 0),
                   _field(reader, "imatrix.chunk_size"))


class _Bytes:
    """A cursor over the legacy file's bytes that refuses any read past the end."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _bad(self.path, f"{what} at byte {self.pos} runs past the end of the file ({len(self.data)} bytes; "
                                  "truncated, or not an importance matrix)")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def int32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _read_legacy(path: Path) -> Imatrix:
    with open(path, "rb") as f:
        if f.seek(0, 2) < 4:
            raise _bad(path, "too short for an importance matrix")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _legacy_entries(data, path)


def _legacy_entries(data, path: Path) -> Imatrix:
    c = _Bytes(data, path)
    n = c.int32("the entry count")
    if n < 1 or n * 12 > len(data):
        raise _bad(path, f"{n:,} entries claimed in {len(data):,} bytes (not a legacy imatrix .dat file?)")
    values = {}
    for _ in range(n):
        length = c.int32("a name length")
        if not 0 < length <= MAX_NAME:
            raise _bad(path, f"a tensor name of {length:,} bytes at byte {c.pos - 4} (1 to {MAX_NAME} expected)")
        try:
            name = c.take(length, "a tensor name").decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(path, f"the tensor name at byte {c.pos - length} is not UTF-8") from None
        ncall, nval = c.int32(f"{name}'s call count"), c.int32(f"{name}'s value count")
        if nval < 1:
            raise _bad(path, f"{name}: {nval} values")
        v = np.frombuffer(c.take(4 * nval, f"{name}'s {nval:,} values"), "<f4").astype(np.float32)
        values[name] = v / np.float32(ncall) if ncall > 0 else v
    chunks, datasets = 0, []
    if c.pos < len(data):  # the newer legacy files end with the chunk count and the dataset's name
        chunks = c.int32("the chunk count")
        length = c.int32("the dataset name's length")
        if not 0 <= length <= len(data) - c.pos:
            raise _bad(path, f"a dataset name of {length:,} bytes with {len(data) - c.pos:,} left")
        datasets = [c.take(length, "the dataset name").decode("utf-8", "replace")]
    return Imatrix(values, datasets, chunks, None, "dat")


def _checked(path, imx: Imatrix) -> Imatrix:
    for name, v in imx.values.items():
        if not np.isfinite(v).all() or (v < 0).any():
            raise _bad(path, f"{name}'s importance values are not all finite and >= 0 (damaged?)")
    return imx
