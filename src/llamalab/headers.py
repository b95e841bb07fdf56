"""Checkpoint headers checked against the file that holds them, before any reader believes them.

A header is hostile input: every count, length, shape and offset in it is taken only if the bytes it
describes exist. `check_gguf` walks a GGUF header the way llama.cpp's gguf.cpp validates one (counts,
string and array lengths, dimensions, types, offsets and sizes inside the file), so that the `gguf`
package's reader, which trusts them, never loops or allocates past what the file holds. safetensors
headers need no walk of ours: the safetensors library checks the header length and every offset against
the file before it reads a byte of data (tests/adversarial/test_loader_fuzz.py holds it to that).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from .errors import LlamalabError

GGUF_VERSIONS = (2, 3)
GGUF_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# The gguf package keeps one numpy object per array item (~100 bytes each): the items of all arrays
# together are capped well above any vocabulary (a 256k vocabulary with scores, types and merges is ~1M).
MAX_ARRAY_ITEMS = 1 << 22
# GGUF value types: scalar sizes, then STRING (8) and ARRAY (9).
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


class _Cursor:
    """Reads little- or big-endian values from a byte buffer, never past its end."""

    def __init__(self, buf, path: Path):
        self.buf, self.path, self.pos, self.order, self.items = buf, path, 0, "<", 0

    def fail(self, what: str):
        raise LlamalabError(f"{self.path}: not a readable GGUF file (header byte {self.pos}: {what}); "
                            "is it truncated or still downloading?")

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if size > self.left:
            self.fail(f"{size} bytes wanted, {self.left} left in the file")
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def skip(self, n: int, what: str):
        if n > self.left:
            self.fail(f"{what} of {n:,} bytes runs past the end of the file ({self.left:,} bytes left)")
        self.pos += n

    def string(self, what: str) -> bytes:
        n = self.take("Q")
        start = self.pos
        self.skip(n, what)
        return bytes(self.buf[start:self.pos])

    def value(self, vtype: int, what: str, nested: bool = False):
        if vtype in SCALARS:
            return self.take(SCALARS[vtype])
        if vtype == STRING:
            return _text(self, self.string(what), f"a string in {what}")
        if vtype != ARRAY or nested:
            self.fail(f"{what} has value type {vtype}, " + ("an array inside an array" if vtype == ARRAY
                                                          else "which GGUF does not define"))
        itype, n = self.take("I"), self.take("Q")
        self.items += n
        if self.items > MAX_ARRAY_ITEMS:
            self.fail(f"{what} brings the array items to {self.items:,}, more than any checkpoint holds "
                      f"(limit {MAX_ARRAY_ITEMS:,})")
        if itype in SCALARS:
            self.skip(n * struct.calcsize(SCALARS[itype]), f"array {what}")
        elif itype == STRING:
            if n * 8 > self.left:
                self.fail(f"array {what} claims {n:,} strings; the file has room for {self.left // 8:,}")
            for _ in range(n):
                _text(self, self.string(f"a string in {what}"), f"a string in {what}")
        else:
            self.value(itype, f"array {what}", nested=True)
        return None


def check_gguf(path) -> None:
    """Raise one LlamalabError unless the GGUF header of `path` describes only bytes the file holds."""
    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            raise LlamalabError(f"{path}: not a readable GGUF file ({size} bytes); is it truncated?")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _walk(_Cursor(buf, path), size)


def _walk(c: _Cursor, size: int) -> None:
    if c.buf[:4] != b"GGUF":
        c.fail("no GGUF magic")
    c.pos = 4
    version = c.take("I")
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        c.order, c.pos = ">", 4
        version = c.take("I")
    if version not in GGUF_VERSIONS:
        c.fail(f"version {version} (supported: {', '.join(map(str, GGUF_VERSIONS))})")
    n_tensors, n_kv = c.take("Q"), c.take("Q")
    if n_kv * 13 > c.left:  # a key/value is at least 8 (key length) + 4 (type) + 1 bytes
        c.fail(f"{n_kv:,} key/values claimed; the file has room for {c.left // 13:,}")
    alignment = GGUF_ALIGNMENT
    for _ in range(n_kv):
        key = _text(c, c.string("a key"), "a key")
        vtype = c.take("I")
        value = c.value(vtype, f"'{key}'")
        if key == "general.alignment":
            if vtype != 4 or value == 0 or value & (value - 1):
                c.fail(f"general.alignment must be a power of two (uint32), got {value!r}")
            alignment = value
    if n_tensors * 24 > c.left:  # name length 8 + n_dims 4 + type 4 + offset 8
        c.fail(f"{n_tensors:,} tensors claimed; the file has room for {c.left // 24:,}")
    tensors = [_tensor_info(c) for _ in range(n_tensors)]
    data_start = -(-c.pos // alignment) * alignment
    for name, offset, nbytes in tensors:
        if offset % alignment:
            c.fail(f"tensor {name} starts at offset {offset}, not a multiple of the alignment {alignment}")
        if data_start + offset + nbytes > size:
            c.fail(f"tensor {name} ({nbytes:,} bytes at offset {offset:,}) ends past the end of the file "
                   f"({size:,} bytes)")


def _tensor_info(c: _Cursor) -> tuple[str, int, int]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    name = _text(c, c.string("a tensor name"), "a tensor name")
    n_dims = c.take("I")
    if not 1 <= n_dims <= MAX_DIMS:
        c.fail(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS})")
    dims = [c.take("Q") for _ in range(n_dims)]
    raw_type = c.take("I")
    offset = c.take("Q")
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(raw_type)]
    except (ValueError, KeyError):
        c.fail(f"tensor {name} has unknown type {raw_type}")
    if min(dims) < 1 or dims[0] % block:
        c.fail(f"tensor {name} has shape {dims}" + (f"; its rows must be whole blocks of {block}" if min(dims) else ""))
    elements = 1
    for d in dims:
        elements *= d
    return name, offset, elements // block * type_size


def _text(c: _Cursor, raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        c.fail(f"{what} is not UTF-8 text")
