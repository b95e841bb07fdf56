"""What reading untrusted input may cost: the one JSON loader, and byte caps on decompressed input.

    config = read_json(path)                  # a JSON file: at most MAX_RECORD bytes, nested <= MAX_DEPTH
    record = loads(line)                      # one JSON text, the same limits
    with open(path, "rb") as raw:             # a (decompressed) stream: lines and documents <= MAX_RECORD
        for line in BoundedStream(gzip.open(raw), str(path)):    # bytes, the whole file <= MAX_FILE

Limits (environment variables, in bytes; lower them to test, raise them for unusual data):
- `LLAMALAB_MAX_RECORD_BYTES` (default 256 MiB): the most held in memory at once for one input: a JSON
  file, one line of JSON Lines, one plain-text document, one compressed table;
- `LLAMALAB_MAX_FILE_BYTES` (default 64 GiB): decompressed bytes read from one input file (a gzip/xz/zstd
  bomb or a sparse file stops here with one clear error instead of running the machine out of memory or time).
JSON nested deeper than MAX_DEPTH (256) is refused before it is parsed (the standard parser would recurse
once per level); so is a string holding a lone surrogate (`"\\ud800"`), which no tokenizer takes. The errors are `json.JSONDecodeError`s (for JSON: callers' handlers of bad JSON apply, and
a damaged checkpoint's file falls back as any other damage does) or `LlamalabError`s. Depends on nothing
but `errors`, so every layer may use it.
"""

from __future__ import annotations

import json
import os
import re
from itertools import accumulate
from pathlib import Path

from .errors import LlamalabError

MAX_DEPTH = 256
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # unrolled: one step per run of plain characters
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}


def _env_bytes(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        n = int(float(value))
    except (ValueError, OverflowError):
        raise LlamalabError(f"{name}={value!r} is not a number of bytes") from None
    if n < 1:
        raise LlamalabError(f"{name} must be a positive number of bytes, got {value}")
    return n


def max_record_bytes() -> int:
    return _env_bytes("LLAMALAB_MAX_RECORD_BYTES", 256 << 20)


def max_file_bytes() -> int:
    return _env_bytes("LLAMALAB_MAX_FILE_BYTES", 64 << 30)


def too_deep(text: str, max_depth: int = MAX_DEPTH) -> int | None:
    """Where `text` (JSON) is first nested deeper than `max_depth` (the index among its brackets), or None.
    Strings are skipped first (brackets inside them do not count); linear time."""
    if text.count("[") + text.count("{") <= max_depth:
        return None
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub('""', text))
    if max(accumulate(map(_DELTA.__getitem__, brackets)), default=0) <= max_depth:
        return None
    return next(i for i, d in enumerate(accumulate(map(_DELTA.__getitem__, brackets))) if d > max_depth)


def lone_surrogate(obj) -> str | None:
    """The first lone surrogate (a JSON escape such as "\\ud800" without its pair) in the strings of a
    parsed JSON value, or None. No tokenizer or UTF-8 writer takes one."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = (item,)
        elif isinstance(item, dict):
            strings = tuple(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for s in strings:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as e:
                return s[e.start]
    return None


def loads(text: str | bytes, *, max_bytes: int | None = None, max_depth: int = MAX_DEPTH):
    """json.loads of an untrusted text, refused (json.JSONDecodeError) when larger than `max_bytes`
    (default `max_record_bytes()`), nested deeper than `max_depth`, or holding a lone surrogate."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    limit = max_bytes or max_record_bytes()
    if len(text) > limit:
        raise json.JSONDecodeError(f"{len(text):,} characters is more than the limit of {limit:,} "
                                   f"(LLAMALAB_MAX_RECORD_BYTES)", "", 0)
    where = too_deep(text, max_depth)
    if where is not None:
        raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", "", 0)
    try:
        obj = json.loads(text)
    except RecursionError:  # not reached with max_depth below the interpreter's limit
        raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", "", 0) from None
    if "\\u" in text and (bad := lone_surrogate(obj)) is not None:  # only an escape can make one
        raise json.JSONDecodeError(f"a string holds a lone surrogate (\\u{ord(bad):04x}), which is not "
                                   f"Unicode text", "", 0)
    return obj


def read_json(path, *, max_bytes: int | None = None, max_depth: int = MAX_DEPTH):
    """The JSON document in file `path` (see `loads`); a file larger than the limit is not read at all.
    OSError when it cannot be read, json.JSONDecodeError (a ValueError) when it is not acceptable JSON."""
    path = Path(path)
    limit = max_bytes or max_record_bytes()
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise json.JSONDecodeError(f"the file is larger than the limit of {limit:,} bytes "
                                   f"(LLAMALAB_MAX_RECORD_BYTES)", "", 0)
    return loads(data.decode("utf-8"), max_bytes=limit, max_depth=max_depth)


def read_capped(f, limit: int, where: str, what: str = "document") -> bytes:
    """All of binary stream `f`, refused (LlamalabError) past `limit` bytes."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise LlamalabError(f"{where}: {what} larger than {limit:,} bytes (LLAMALAB_MAX_RECORD_BYTES); a "
                            "compression bomb or a sparse file? Raise the limit if the data is genuine")
    return data


class BoundedStream:
    """A binary stream (often a decompressor) read with caps: each line at most `max_record` bytes, the
    whole stream at most `max_file` bytes; past either, one LlamalabError naming `where`."""

    def __init__(self, f, where: str, *, max_record: int | None = None, max_file: int | None = None):
        self.f, self.where = f, where
        self.max_record = max_record or max_record_bytes()
        self.max_file = max_file or max_file_bytes()
        self.total = 0

    def _count(self, n: int) -> None:
        self.total += n
        if self.total > self.max_file:
            raise LlamalabError(f"{self.where}: more than {self.max_file:,} bytes once decompressed "
                                "(LLAMALAB_MAX_FILE_BYTES); a compression bomb or a sparse file? Raise the "
                                "limit if the data is genuine")

    def readline(self) -> bytes:
        line = self.f.readline(self.max_record + 1)
        self._count(len(line))
        if len(line) > self.max_record:
            raise LlamalabError(f"{self.where}: a line longer than {self.max_record:,} bytes "
                                "(LLAMALAB_MAX_RECORD_BYTES); a compression bomb or a sparse file? Raise the "
                                "limit if the data is genuine")
        return line

    def __iter__(self):
        while line := self.readline():
            yield line

    def read(self) -> bytes:
        """The whole stream, as one record (so at most `max_record` bytes)."""
        data = read_capped(self.f, min(self.max_record, self.max_file), self.where)
        self._count(len(data))
        return data
