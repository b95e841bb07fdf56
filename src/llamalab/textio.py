"""Reading text inputs: the one reader behind `data prepare`, tokenizer training and `tokenize --jsonl`.

    for doc in iter_texts("crawl.jsonl.gz"):             # one text per JSON line (a string or {"text": ...})
    for doc in iter_texts("books/moby.txt"):             # a plain file is one text
    for line in iter_texts("moby.txt.xz", lines=True):   # ... or, with lines=True, one text per line

Formats, told by the file name: plain text; JSON Lines (`.jsonl`, `.ndjson`, `.json`: a JSON string or
an object with a string `field` per line, blank lines skipped); Parquet and Arrow tables (`.parquet`,
`.arrow`: the `field` column); any of them `.gz`, `.xz`, `.bz2` or `.zst` compressed (`open_input`, which
`data clean` reads with too). `"-"` reads standard input.
`read_records` reads a JSON array or JSON Lines file of records (instruction data, questions, answers).
A bad record is one `LlamalabError` naming the file and line; so is a line or document past the byte caps
of `llamalab.bounded` (a compression bomb, a sparse file). This module depends on nothing but the leaves
`errors` and `bounded`, so every layer may use it.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .bounded import BoundedStream, loads, max_record_bytes, read_capped
from .errors import LlamalabError

COMPRESSION = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open, ".zst": None}  # .zst: `decompress`
JSONL = {".jsonl", ".ndjson", ".json"}
TABLES = {".parquet", ".arrow"}


def read_text(path, missing: str) -> str:
    """The whole of a UTF-8 text file, or of standard input for "-" (at most `bounded.max_record_bytes()`).
    A missing file is the error `missing` (what the caller expected there); bytes that are not UTF-8 are one
    clear error too."""
    if path == "-":
        with _open_binary("-", None) as (f, _):
            data = read_capped(f, max_record_bytes(), "<stdin>", "text")
        return _decode(data, "<stdin>")
    path = Path(path)
    if not path.is_file():
        raise LlamalabError(missing)
    try:
        with open(path, "rb") as f:
            return read_capped(f, max_record_bytes(), str(path), "file").decode("utf-8")
    except UnicodeDecodeError as e:
        raise LlamalabError(f"{path}: not UTF-8 text (byte {e.start}); is it compressed or binary?") from None


def decompress(f, comp: str | None):
    """The decompressed binary stream of the binary file object `f` (comp: ".gz", ".xz", ".bz2", ".zst", or
    None for none)."""
    if comp is None:
        return f
    if comp == ".zst":
        try:
            import zstandard  # optional (the data extra): only .zst inputs need it
        except ImportError:
            raise LlamalabError("reading .zst files needs zstandard: pip install 'llamalab[data]'") from None
        return io.BufferedReader(zstandard.open(f, "rb"))
    return COMPRESSION[comp](f)


def stream_errors(comp: str | None = ".zst") -> tuple:
    """What reading a damaged (compressed) file raises."""
    errors = (OSError, EOFError, lzma.LZMAError, zlib.error)
    if comp == ".zst":
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


def open_input(path, comp: str | None = None):
    """The one input-file opener: `path` as a decompressed binary stream (comp from `input_format`)."""
    raw = open(path, "rb")
    try:
        return decompress(raw, comp)
    except BaseException:
        raw.close()
        raise


def input_format(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression suffix or None) of a file name: `a.jsonl.gz` → (".jsonl", ".gz")."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    comp = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSION else None
    return (suffixes[-1] if suffixes else ""), comp


REPORTS = {"stats.json"}  # written beside the data it describes (`data clean`'s report): not a document


def expand_inputs(paths: Iterable) -> list[Path]:
    """Files named, and every non-hidden file below directories named (reports aside), in a stable order.
    A symlink below a directory that leads out of it (to /etc/shadow, say) is refused: only what the
    directory holds is read (name such a file on its own to read it)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name not in REPORTS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            root = p.resolve()
            for f in found:
                if not f.resolve().is_relative_to(root):
                    raise LlamalabError(f"{f} is a symlink to {f.resolve()}, outside the input directory {p}; "
                                        "remove it, or name that file as an input of its own")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise LlamalabError(f"input not found: {p}")
    return files


def record_text(line: str, field: str, where: str) -> str:
    """The text of one JSON line: a JSON string, or an object with a string `field`."""
    try:
        obj = loads(line)
    except ValueError as e:
        raise LlamalabError(f"{where}: not a JSON line ({getattr(e, 'msg', e)})") from None
    text = obj.get(field) if isinstance(obj, dict) else obj
    if not isinstance(text, str):
        raise LlamalabError(f"{where}: expected a JSON string or an object with a string field {field!r}")
    return text


def iter_texts(path, field: str = "text", *, lines: bool = False, fmt: str | None = None,
               on_read: Callable[[int], object] | None = None) -> Iterator[str]:
    """The texts in one input (see the module docstring). `lines`: split every text into its lines
    (without line ends; a plain file is then read line by line, never whole). `fmt` overrides the format
    the name implies (".jsonl" for standard input holding JSON lines). `on_read(n)` is told the bytes of
    the (compressed) file consumed since its last call, for a progress bar."""
    where = "<stdin>" if path == "-" else str(path)
    name_fmt, comp = input_format(Path(where))
    fmt = fmt or name_fmt
    if fmt in TABLES:
        yield from _split(_table_texts(Path(path), fmt, comp, field), lines)
        return
    try:
        with _open_binary(path, comp) as (f, raw):
            last = 0
            for n, text in enumerate(_texts(BoundedStream(f, where), where, fmt, field, lines), 1):
                yield text
                if on_read is not None and n % 1024 == 0:
                    pos = raw.tell()
                    on_read(pos - last)
                    last = pos
            if on_read is not None and path != "-":
                on_read(raw.tell() - last)
    except stream_errors(comp) as e:
        raise LlamalabError(f"cannot read {where}: {e}") from None


class _open_binary:
    """(decompressed binary stream, the underlying file) for a path or "-" (standard input)."""

    def __init__(self, path, comp: str | None):
        self.path, self.comp = path, comp

    def __enter__(self):
        if self.path == "-":  # a replaced sys.stdin (a StringIO) has no binary buffer
            stdin = sys.stdin
            self.raw = getattr(stdin, "buffer", None) or io.BytesIO(stdin.read().encode("utf-8"))
        else:
            self.raw = open(self.path, "rb")
        return decompress(self.raw, self.comp), self.raw

    def __exit__(self, *exc):
        if self.path != "-":
            self.raw.close()


def _decode(data: bytes, where: str, lineno: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = lineno or data[:e.start].count(b"\n") + 1
        raise LlamalabError(f"{where}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); "
                            "convert it or leave it out") from None


def _texts(f, where: str, fmt: str, field: str, lines: bool) -> Iterator[str]:
    if fmt in JSONL:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield from _split([record_text(_decode(line, where, n), field, f"{where}:{n}")], lines)
    elif lines:  # line ends as Python's universal newlines: \n, \r\n and \r
        for n, line in enumerate(f, 1):
            yield from _decode(line, where, n).removesuffix("\n").removesuffix("\r").split("\r")
    else:
        yield _decode(f.read(), where).replace("\r\n", "\n").replace("\r", "\n")


def _split(texts: Iterable[str], lines: bool) -> Iterator[str]:
    for text in texts:
        if lines:
            yield from text.splitlines()
        else:
            yield text


def _table_texts(path: Path, fmt: str, comp: str | None, field: str) -> Iterator[str]:
    """The non-null values of column `field` in a Parquet file or an Arrow IPC file or stream (what
    `datasets.save_to_disk` writes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def source():
        if not comp:
            return pa.memory_map(str(path))
        with open_input(path, comp) as f:
            return pa.BufferReader(read_capped(f, max_record_bytes(), str(path), "decompressed table"))

    try:
        if fmt == ".parquet":
            table = pq.ParquetFile(source())
            names = table.schema_arrow.names
            batches = table.iter_batches(columns=[field]) if field in names else iter(())
        else:
            try:
                reader = pa.ipc.open_file(source())
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                reader = pa.ipc.open_stream(source())
                batches = iter(reader)
            names = reader.schema.names
        if field not in names:
            raise LlamalabError(f"{path}: no column {field!r} (columns: {names}); choose the text column")
        for batch in batches:
            yield from (t for t in batch.column(field).to_pylist() if t is not None)
    except (pa.ArrowException, OSError) as e:
        raise LlamalabError(f"cannot read table {path}: {e}") from None


def read_records(path) -> list[tuple[str, object]]:
    """[(where, record)] of a JSON array or JSON Lines file; `where` is "file:line" or "file[record]"."""
    path = Path(path)
    text = read_text(path, f"instruction data {path} not found (want a .json or .jsonl file of records)")
    if text.lstrip().startswith("["):
        try:
            records = loads(text)
        except json.JSONDecodeError as e:
            raise LlamalabError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        return [(f"{path}[{i}]", r) for i, r in enumerate(records)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{n}", loads(line)))
        except json.JSONDecodeError as e:
            raise LlamalabError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno}); each line must be "
                                f"one JSON record") from None
    if not out:
        raise LlamalabError(f"{path}: no records (the file is empty)")
    return out
