"""Data preparation: text sources → tokenized, packed shards + manifest (see `shards.py` for the layout).

    prepare({"prose": [Path("books/")], "code": [Path("code.jsonl.gz")]}, "tokenizer.model", "data/")

Inputs (read by `text.iter_texts`): plain text files (one document per file), `.jsonl` (one document per
line, its `text_field`), `.parquet` and `.arrow` tables (a `text_field` column); any of them
`.gz`/`.xz`/`.bz2` compressed; directories are walked recursively. Worker processes tokenize batches of documents (the tokenizer's
own batch encoder); every document gets EOS appended (and BOS prepended when the tokenizer adds one).
A document goes to the held-out split when a hash of its text falls below `val_fraction`, so the split
is deterministic and independent of file order.

Idempotent: a source whose inputs (paths, sizes, mtimes), tokenizer (sha256) and settings are unchanged
is left alone; a changed one is rebuilt in a temporary directory and swapped in; the manifest is
replaced atomically after each source. Sources already in the manifest but not named in a run are kept.
A dataset has one tokenizer: preparing into it with another one is refused.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import threads
from ..atomic import check_apart, sha256_file, staged_dir
from ..errors import LlamalabError
from ..textio import expand_inputs, iter_texts
from ..tokenizer import load_tokenizer
from .corpus import demo_sources
from .shards import MANIFEST, VERSION, read_manifest, token_dtype, write_manifest, write_shard

# What the shards of a dataset depend on: the vocabulary files and tokenizer_config.json (add_bos). The other
# tokenizer files (tokenizer.TOKENIZER_FILES: special-tokens map, chat template, generation config) are left
# out, so datasets prepared before stay valid.
_ENCODING_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


# ---------------------------------------------------------------- tokenizing (in worker processes)
_worker: dict = {}


def _init_worker(tokenizer, val_fraction: float, pooled: bool = True) -> None:
    """Set up tokenizing in this process; `tokenizer` is a path (worker processes) or a Tokenizer."""
    if pooled:  # the processes are the parallelism: one thread each
        os.environ["TOKENIZERS_PARALLELISM"] = "false"

    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    if pooled and hasattr(tok, "num_threads"):
        tok.num_threads = 1
    _worker.update(tok=tok, val_fraction=val_fraction, dtype=token_dtype(tok.vocab_size))


def is_heldout(text: str, val_fraction: float) -> bool:
    """Deterministic per-document split: a 64-bit hash of the text, read as a number in [0, 1)."""
    if val_fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


def _tokenize(docs: list[str]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(train tokens, val tokens, train docs, val docs) for a batch of documents."""
    tok = _worker["tok"]
    ids = tok.encode_batch(docs, bos=tok.add_bos, eos=True, special=False)
    split = [is_heldout(d, _worker["val_fraction"]) for d in docs]
    dtype = _worker["dtype"]
    train = [np.asarray(x, dtype=dtype) for x, v in zip(ids, split) if not v]
    val = [np.asarray(x, dtype=dtype) for x, v in zip(ids, split) if v]
    cat = lambda xs: np.concatenate(xs) if xs else np.empty(0, dtype=dtype)  # noqa: E731
    return cat(train), cat(val), len(train), len(val)


# ---------------------------------------------------------------- the pipeline
def tokenizer_identity(path: Path) -> dict:
    """The tokenizer's file(s) and sha256: what the shards depend on."""
    path = Path(path)
    files = sorted(f for f in path.iterdir() if f.name in _ENCODING_FILES or f.suffix == ".gguf") \
        if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return {"path": str(path.resolve()), "sha256": h.hexdigest() if path.is_dir() else sha256_file(path)}


def vocab_fingerprint(tok) -> str:
    """sha256 of the vocabulary itself (every piece in id order, the special ids): equal for one tokenizer
    whatever file carries it (a GGUF, a tokenizer.json, a checkpoint's directory)."""
    h = hashlib.sha256(f"{tok.vocab_size} {tok.bos_id} {tok.eos_id}\0".encode())
    for i in range(tok.vocab_size):
        h.update(tok.id_to_piece(i).encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


@dataclass
class _ShardWriter:
    tmp: Path            # where shards are written before the swap
    name: str
    prefix: str
    shard_tokens: int
    dtype: np.dtype

    def __post_init__(self):
        self.buf: list[np.ndarray] = []
        self.buffered = 0
        self.shards: list[dict] = []
        self.tokens = 0

    def add(self, tokens: np.ndarray) -> None:
        self.buf.append(tokens)
        self.buffered += tokens.size
        self.tokens += tokens.size
        while self.buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> list[dict]:
        if self.buffered:
            self._flush(self.buffered)
        return self.shards

    def _flush(self, n: int) -> None:
        data = np.concatenate(self.buf)
        file = f"{self.prefix}-{len(self.shards):05d}.bin"
        entry = write_shard(self.tmp / file, data[:n])
        self.shards.append({"file": f"{self.name}/{file}", **entry})
        rest = data[n:]
        self.buf, self.buffered = ([rest] if rest.size else []), rest.size


def parse_sources(specs: list[str], *, demo: bool = False) -> dict[str, list[str]]:
    """`NAME=PATH[,PATH...]` specs (`--source`) as {name: paths}; demo: add the embedded demo corpus's sources
    (prose, reference, qa, code) where no source of that name is given."""
    sources = {}
    for spec in specs:
        name, eq, paths = spec.partition("=")
        if not eq or not name or not paths:
            raise LlamalabError(f"bad --source {spec!r}: write NAME=PATH[,PATH...]")
        if name in sources:
            raise LlamalabError(f"source {name!r} given twice; list its paths comma-separated in one --source")
        sources[name] = [p for p in paths.split(",") if p]
    for name, path in (demo_sources() if demo else {}).items():
        sources.setdefault(name, [path])
    return sources


def prepare(sources: dict[str, list], tokenizer, out, *, workers: int | None = None, text_field: str = "text",
            val_fraction: float = 0.0, shard_tokens: int = 1 << 27, batch_docs: int = 64,
            progress: bool = True, log=print) -> dict:
    """Tokenize and pack each source into `<out>/<source>/`; returns the manifest. Sources whose
    inputs, tokenizer and settings are unchanged since the last run are skipped ("up to date")."""

    if not sources:
        raise LlamalabError("no sources given: pass --source NAME=PATH[,PATH...]")
    for name in sources:
        if not name or name.startswith(".") or any(c in name for c in "/\\="):
            raise LlamalabError(f"bad source name {name!r}: use letters, digits, '-' or '_'")
    if not 0 <= val_fraction < 1:
        raise LlamalabError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if workers is not None and workers < 1:
        raise LlamalabError(f"--workers must be at least 1, got {workers}")
    if shard_tokens < 1:
        raise LlamalabError(f"--shard-tokens must be positive, got {shard_tokens}")
    for paths in sources.values():  # the sources' shards are replaced: never a source itself
        check_apart(out, paths, "--out")
    tokenizer = Path(tokenizer)
    tok = load_tokenizer(tokenizer)
    if tok.eos_id is None:
        raise LlamalabError(f"tokenizer {tokenizer} has no EOS token; documents need one to be packed")
    ident = {**tokenizer_identity(tokenizer), "kind": tok.kind, "vocab_size": tok.vocab_size,
             "bos_id": tok.bos_id, "eos_id": tok.eos_id, "add_bos": bool(tok.add_bos),
             "vocab_sha256": vocab_fingerprint(tok)}
    dtype = token_dtype(tok.vocab_size)
    inputs_of = {name: expand_inputs(paths) for name, paths in sources.items()}  # bad inputs fail before a write
    out = Path(out)
    manifest = {"version": VERSION, "dtype": dtype.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                "tokenizer": ident, "sources": {}}
    changed = True
    if (out / MANIFEST).is_file():
        old, _ = read_manifest(out)
        if (old.get("tokenizer") or {}).get("sha256") != ident["sha256"]:
            raise LlamalabError(f"{out} was prepared with another tokenizer "
                                f"({(old.get('tokenizer') or {}).get('path')}); use a new --out directory "
                                f"(or delete {out}) to tokenize with {tokenizer}")
        manifest["sources"] = old["sources"]  # keep sources not named in this run
        changed = False

    with _output_dir(out):  # a directory this run made is gone again if it fails
        settings = {"text_field": text_field, "val_fraction": val_fraction, "version": VERSION}
        for name, paths in sources.items():
            files = inputs_of[name]
            if not files:
                raise LlamalabError(f"source {name!r}: no input files in {', '.join(map(str, paths))}")
            inputs = [{"path": str(f.resolve()), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
                      for f in files]
            fingerprint = hashlib.sha256(json.dumps([inputs, ident["sha256"], settings]).encode()).hexdigest()
            old = manifest["sources"].get(name)
            if old and old.get("fingerprint") == fingerprint and _shards_present(out, old, dtype):
                log(f"{name}: up to date ({old['documents']:,} documents, {old['tokens']:,} tokens)")
                continue
            entry = _build_source(name, files, tokenizer, tok, out, dtype, workers=workers, text_field=text_field,
                                  val_fraction=val_fraction, shard_tokens=shard_tokens, batch_docs=batch_docs,
                                  progress=progress)
            manifest["sources"][name] = {"inputs": inputs, "fingerprint": fingerprint, **entry}
            write_manifest(out, manifest)
            changed = True
            log(f"{name}: {entry['documents']:,} documents, {entry['tokens']:,} tokens"
                + (f" (+ held out: {entry['val_documents']:,} documents, {entry['val_tokens']:,} tokens)"
                   if val_fraction > 0 else ""))
        if changed:
            write_manifest(out, manifest)
    return manifest


@contextmanager
def _output_dir(out: Path):
    """`out`, created if need be; when the block fails, a directory it created and left empty is removed."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise


def _shards_present(root: Path, entry: dict, dtype: np.dtype) -> bool:
    return all((root / s["file"]).is_file() and (root / s["file"]).stat().st_size == s["tokens"] * dtype.itemsize
               for s in entry.get("shards", []) + entry.get("val_shards", []))


def _batches(files: list[Path], text_field: str, batch_docs: int, max_chars: int = 1 << 20):
    batch, chars = [], 0
    for f in files:
        for doc in iter_texts(f, text_field):
            if not doc:
                continue
            batch.append(doc)
            chars += len(doc)
            if len(batch) >= batch_docs or chars >= max_chars:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def _build_source(name, files, tokenizer, tok, out, dtype, *, workers, text_field, val_fraction, shard_tokens,
                  batch_docs, progress) -> dict:
    """Tokenize one source's files into `<out>/<name>/`, which an earlier build leaves as it was until this
    one is complete. Returns the source's manifest entry (without inputs and fingerprint)."""

    docs = [0, 0]
    threads.adapt()  # (nothing to apply: torch is not loaded; logged at the end)
    workers = max(1, workers or threads.worker_count())
    bar = tqdm(desc=name, unit=" docs", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    with staged_dir(out / name) as tmp:
        train = _ShardWriter(tmp, name, "shard", shard_tokens, dtype)
        val = _ShardWriter(tmp, name, "val", shard_tokens, dtype)

        def consume(result):
            t, v, nt, nv = result
            train.add(t)
            val.add(v)
            docs[0] += nt
            docs[1] += nv
            bar.update(nt + nv)
            bar.set_postfix_str(f"{(train.tokens + val.tokens) / (time.perf_counter() - start):,.0f} tok/s",
                                refresh=False)

        try:
            if workers == 1:
                _init_worker(tok, val_fraction, pooled=False)  # the backend's own threads
                for batch in _batches(files, text_field, batch_docs):
                    consume(_tokenize(batch))
            else:
                # fork: workers need nothing from the parent but the tokenizer path, and spawn cannot start
                # workers when the main program is not a file (python -c, stdin, notebooks)
                ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
                with ctx.Pool(workers, _init_worker, (str(tokenizer), val_fraction)) as pool:
                    pending = deque()  # bounded read-ahead, results consumed in order
                    for batch in _batches(files, text_field, batch_docs):
                        pending.append(pool.apply_async(_tokenize, (batch,)))
                        if len(pending) >= 4 * workers:
                            consume(pending.popleft().get())
                    while pending:
                        consume(pending.popleft().get())
        finally:
            bar.close()
        if docs[0] + docs[1] == 0:
            raise LlamalabError(f"source {name!r} is empty: no documents in {', '.join(map(str, files))}")
        shards, val_shards = train.close(), val.close()
    return {"documents": docs[0], "tokens": train.tokens, "shards": shards,
            "val_documents": docs[1], "val_tokens": val.tokens, "val_shards": val_shards}
