"""Reading raw inputs into documents, tolerating bad records, and the intermediate / final shard formats.

Inputs: `.jsonl` (one JSON object per line; also `.json`/`.ndjson`), optionally `.gz`/`.zst`/`.xz`/`.bz2`;
`.parquet` and `.arrow` tables (a row per document); any other file is plain text, one document per file
(directories are walked). Every input field is kept: a document's `fields` hold the record with the
text field's slot left in place, and the final writer puts the cleaned text back into that slot.

Work is split into *units* — a file, or a newline-aligned byte range of a large uncompressed `.jsonl` —
and task `r` of `T` reads units `r, r+T, ...`: the split depends on the inputs only, never on how many
workers run, so the output is the same for any worker count.

A malformed JSON line, a record without a string text field, or invalid UTF-8 is a *bad record*: it is
counted, remembered with its file and line, and skipped; the rest of the file is still read. A corrupt
compressed stream ends that file (nothing after the damage can be decoded), never the run; so does a
line, document or file past the byte caps of `llamalab.bounded` (a compression bomb, a sparse file).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter

from ...atomic import write_text
from ...bounded import BoundedStream, max_record_bytes, read_capped
from ...errors import LlamalabError
from ...textio import JSONL, TABLES, expand_inputs, input_format, open_input, stream_errors

SPLIT_BYTES = 32 << 20          # uncompressed .jsonl files above this are read as several units
MAX_BAD_LISTED = 1000           # bad records remembered per task (all are counted)


@dataclass(frozen=True)
class Unit:
    """A piece of input one task reads: a whole file, or bytes [start, end) of an uncompressed .jsonl."""
    path: str
    root: str            # the input argument the file was found under (relative paths, license lookup)
    start: int = 0
    end: int = -1


def plan_units(inputs: list[str], split_bytes: int = SPLIT_BYTES) -> list[Unit]:
    """The units of the given files/directories, in a stable order."""
    units = []
    for arg in inputs:
        root = str(Path(arg).resolve())
        base = root if Path(arg).is_dir() else str(Path(root).parent)
        for f in expand_inputs([Path(arg)]):
            f = str(f.resolve())
            fmt, comp = input_format(f)
            size = os.path.getsize(f)
            if fmt in JSONL and comp is None and size > split_bytes:
                units += [Unit(f, base, s, min(s + split_bytes, size)) for s in range(0, size, split_bytes)]
            else:
                units.append(Unit(f, base))
    return units


class BadRecord(Exception):
    """A record that cannot be read; `line` is 1-based (0 for a whole file)."""


class InputReader(PipelineStep):
    """Reads this task's units into Documents (`metadata`: `fields`, `file`, `root`, `line`)."""

    type = "📖 - READER"
    name = "read"

    def __init__(self, units: list[Unit], text_key: str = "text", bad_dir: str | None = None):
        super().__init__()
        self.units = units
        self.text_key = text_key
        self.bad_dir = bad_dir
        self.bad: list[dict] = []

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        self.bad = []
        for unit in self.units[rank::world_size]:
            for doc in self._read_unit(unit):
                self.stat_update("docs_out")
                self.stat_update("bytes_out", value=len(doc.text.encode("utf-8")))
                yield doc
        if self.bad_dir:
            write_text(Path(self.bad_dir) / f"{rank:05d}.json", json.dumps(self.bad))

    def bad_record(self, unit: Unit, line: int, why: str):
        self.stat_update("bad_records")
        if len(self.bad) < MAX_BAD_LISTED:
            self.bad.append({"file": unit.path, "line": line, "error": why})

    def _read_unit(self, unit: Unit):
        fmt, comp = input_format(unit.path)
        try:
            if fmt in JSONL:
                yield from self._read_jsonl(unit, comp)
            elif fmt in TABLES:
                yield from self._read_table(unit, fmt, comp)
            else:
                yield from self._read_text(unit, comp)
        except _stream_errors() as e:  # a damaged stream: nothing after it can be decoded
            self.bad_record(unit, 0, f"cannot read further: {type(e).__name__}: {e}")
        except LlamalabError as e:  # past a byte cap (bounded.py): a bomb or a sparse file
            self.bad_record(unit, 0, f"cannot read further: {e}")

    def _document(self, unit: Unit, line: int, record: dict) -> Document:
        return Document(text=record[self.text_key], id=f"{unit.path}:{line}",
                        metadata={"fields": {**record, self.text_key: None}, "file": unit.path,
                                  "root": unit.root, "line": line})

    def _read_jsonl(self, unit: Unit, comp: str | None):
        import orjson

        with open_input(unit.path, comp) as f:
            stream = BoundedStream(f, unit.path)
            line_no = 0
            if unit.start > 0:
                f.seek(unit.start - 1)
                f.readline()  # the line straddling `start` belongs to the previous unit
                line_no = _count_lines(unit.path, f.tell())
            while unit.end < 0 or f.tell() < unit.end:
                raw = stream.readline()
                if not raw:
                    break
                line_no += 1
                if not raw.strip():
                    continue
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError as e:
                    self.bad_record(unit, line_no, f"not JSON: {e}")
                    continue
                if not isinstance(record, dict) or not isinstance(record.get(self.text_key), str):
                    self.bad_record(unit, line_no, f"not a JSON object with a string field {self.text_key!r}")
                    continue
                yield self._document(unit, line_no, record)

    def _read_text(self, unit: Unit, comp: str | None):
        with open_input(unit.path, comp) as f:
            raw = BoundedStream(f, unit.path).read()
        if b"\0" in raw:
            self.bad_record(unit, 0, "binary file (NUL bytes)")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            self.bad_record(unit, line, f"not UTF-8 ({e.reason} at byte {e.start})")
            return
        rel = os.path.relpath(unit.path, unit.root)
        yield self._document(unit, 1, {self.text_key: text, "path": rel})

    def _read_table(self, unit: Unit, fmt: str, comp: str | None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if comp:
            with open_input(unit.path, comp) as f:
                source = pa.BufferReader(read_capped(f, max_record_bytes(), unit.path, "decompressed table"))
        else:
            source = pa.memory_map(unit.path)
        try:
            if fmt == ".parquet":
                batches = pq.ParquetFile(source).iter_batches()
            else:
                try:
                    reader = pa.ipc.open_file(source)
                    batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
                except pa.ArrowInvalid:
                    batches = iter(pa.ipc.open_stream(source))
            row = 0
            for batch in batches:
                for record in batch.to_pylist():
                    row += 1
                    if not isinstance(record.get(self.text_key), str):
                        self.bad_record(unit, row, f"row has no string column {self.text_key!r}")
                        continue
                    yield self._document(unit, row, _jsonable(record))
        except pa.ArrowException as e:
            self.bad_record(unit, 0, f"not a readable {fmt[1:]} table: {e}")


def _stream_errors() -> tuple:
    return (*stream_errors(), ValueError)


def _count_lines(path: str, upto: int) -> int:
    n = 0
    with open(path, "rb") as f:
        while upto > 0:
            block = f.read(min(upto, 1 << 24))
            if not block:
                break
            n += block.count(b"\n")
            upto -= len(block)
    return n


def _jsonable(record: dict) -> dict:
    """Table values JSON cannot hold (dates, bytes, decimals) as their string form."""
    try:
        json.dumps(record)
        return record
    except (TypeError, ValueError):
        return json.loads(json.dumps(record, default=str))


# ------------------------------------------------------------------ between passes and the final output
def shard_name(rank: int) -> str:
    return f"{rank:05d}.jsonl"


class ShardReader(PipelineStep):
    """Reads back what a previous pass wrote for this task (datatrove's JsonlWriter format): the file of
    rank `r`, so document indices match the signatures that pass computed."""

    type = "📖 - READER"
    name = "read shard"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        import orjson

        path = Path(self.folder) / shard_name(rank)
        if not path.exists():  # the task had no documents left
            return
        with open(path, "rb") as f:
            for line in f:
                d = orjson.loads(line)
                yield Document(text=d["text"], id=d["id"], metadata=d.get("metadata", {}))


class OutputWriter(JsonlWriter):
    """Writes the final records: every input field, the cleaned text in the text field's slot."""

    name = "write"

    def __init__(self, folder: str, text_key: str, compression: str | None):
        super().__init__(folder, output_filename="${rank}.jsonl", compression=compression)
        self.text_key = text_key

    def _default_adapter(self, document: Document) -> dict:
        fields = dict(document.metadata["fields"])
        fields[self.text_key] = document.text
        return fields


def work_writer(folder: str) -> JsonlWriter:
    """The intermediate shard of one task between two passes (uncompressed: read back once, then deleted)."""
    return JsonlWriter(folder, output_filename="${rank}.jsonl", compression=None)
