"""Training LLaMA's tokenizer (the paper, §2 "Tokenizer")."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from ..errors import LlamalabError
from .spm import SentencePieceTokenizer

# LLaMA's settings: SentencePiece BPE, every digit its own token, unknown UTF-8 falls back to bytes, the
# text is not normalized (identity, whitespace kept as is) so decode(encode(x)) == x for any x.
LLAMA_TRAINER_SPEC = dict(
    model_type="bpe", split_digits=True, byte_fallback=True, normalization_rule_name="identity",
    remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
    character_coverage=0.99995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    split_by_unicode_script=True, split_by_whitespace=True, shuffle_input_sentence=True,
)
MIN_VOCAB = 3 + 256 + 1  # <unk> <s> </s>, the 256 byte pieces, and room for at least one more


def train_tokenizer(inputs, vocab_size: int, out_dir, *, input_sentence_size: int = 2_000_000,
                    max_line_chars: int = 4096, num_threads: int | None = None, seed: int = 0,
                    chat_template: str | None = None, progress: bool = True, **spec) -> SentencePieceTokenizer:
    """Train LLaMA's tokenizer on text files and write `tokenizer.model` + `tokenizer.json` into `out_dir`.

    Input files are plain text (`.gz`/`.xz`/`.bz2` read transparently; `.jsonl` lines are JSON strings or
    objects with a "text" field). They are streamed once: lines longer than `max_line_chars` are cut at a
    space, and a uniform sample of at most `input_sentence_size` lines (reservoir sampling, `seed`) goes
    to SentencePiece. `spec` overrides entries of LLAMA_TRAINER_SPEC.
    """
    import random
    import sys
    import time

    import sentencepiece as spm
    from tqdm import tqdm

    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise LlamalabError("no input files given")
    for p in inputs:
        if not p.is_file():
            raise LlamalabError(f"input file not found: {p}")
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise LlamalabError(f"vocab size {vocab_size} is too small: byte fallback alone needs 256 byte pieces "
                            f"plus <unk> <s> </s>; use at least {MIN_VOCAB} (LLaMA uses 32000)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    total = sum(p.stat().st_size for p in inputs)
    with tqdm(total=total, unit="B", unit_scale=True, desc="reading input", disable=not progress,
              file=sys.stderr, leave=False) as bar:
        for p in inputs:
            with _open_input(p) as (f, raw):
                last = 0
                for line in _lines(f, p):
                    for chunk in _chunks(line, max_line_chars):
                        seen += 1
                        if len(sample) < input_sentence_size:
                            sample.append(chunk)
                        elif (j := rng.randrange(seen)) < input_sentence_size:
                            sample[j] = chunk
                    if seen % 4096 == 0:
                        pos = raw.tell()
                        bar.update(pos - last)
                        last = pos
                bar.update(raw.tell() - last)
    if not sample:
        raise LlamalabError(f"the input ({', '.join(map(str, inputs))}) holds no text to train on")

    with tempfile.TemporaryDirectory(dir=out, prefix=".train-") as tmp:
        corpus = Path(tmp) / "sample.txt"
        corpus.write_text("\n".join(sample) + "\n", encoding="utf-8")
        chars = sum(map(len, sample))
        del sample
        kwargs = {**LLAMA_TRAINER_SPEC, **spec, "input": str(corpus), "model_prefix": str(Path(tmp) / "sp"),
                  "vocab_size": vocab_size, "input_sentence_size": input_sentence_size,
                  "max_sentence_length": 4 * max_line_chars + 16, "num_threads": num_threads or os.cpu_count() or 1}
        log = Path(tmp) / "sentencepiece.log"
        t0 = time.time()
        try:
            with _Spinner(f"training BPE, vocab {vocab_size}, {seen:,} lines / {chars:,} chars", enabled=progress), \
                    _stderr_to(log):
                spm.SentencePieceTrainer.train(**kwargs)
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[-1]
            msg = re.sub(r"^.*?\) \[[^\]]*\] ", "", msg)  # drop sentencepiece's "Internal: file.cc(123) [cond]"
            raise LlamalabError(f"SentencePiece training failed: {msg}") from None
        if progress:
            print(f"trained a {vocab_size}-piece BPE tokenizer in {time.time() - t0:.1f}s", file=sys.stderr)
        tok = SentencePieceTokenizer((Path(tmp) / "sp.model").read_bytes(), add_bos=True, chat_template=chat_template)
    tok.save(out)
    return tok


def _open_input(path: Path):
    """(text stream, underlying binary file for progress) for a possibly compressed input file."""
    import bz2
    import contextlib
    import gzip
    import io
    import lzma

    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix)

    @contextlib.contextmanager
    def ctx():
        with open(path, "rb") as raw:
            stream = opener(raw) if opener else raw
            yield io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None), raw
    return ctx()


def json_text(line: str, where: str) -> str:
    """The text of one JSONL line: a JSON string, or an object with a "text" string."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise LlamalabError(f"{where}: not a JSON line") from None
    text = obj.get("text") if isinstance(obj, dict) else obj
    if not isinstance(text, str):
        raise LlamalabError(f"{where}: expected a JSON string or an object with a \"text\" string")
    return text


def _lines(f, path: Path):
    jsonl = ".jsonl" in path.suffixes
    for n, line in enumerate(f, 1):
        if jsonl:
            line = line.strip()
            if not line:
                continue
            yield from json_text(line, f"{path}:{n}").splitlines()
        else:
            yield line.rstrip("\n")


def _chunks(line: str, n: int):
    """`line` cut into pieces of at most `n` characters, at a space where there is one; blank lines skipped."""
    while len(line) > n:
        cut = line.rfind(" ", n // 2, n)
        cut = n if cut <= 0 else cut
        yield line[:cut]
        line = line[cut:]
    if line.strip():
        yield line


class _stderr_to:
    """Send file descriptor 2 (where SentencePiece's C++ logging goes) to a file for the duration."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import sys
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(self.fd, 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        os.close(self.fd)


class _Spinner:
    """An elapsed-time status line on the terminal's stderr while a long call runs (no-op if not a tty)."""

    def __init__(self, label: str, enabled: bool = True):
        import sys
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()

    def __enter__(self):
        import threading
        if self.enabled:
            self.out = os.fdopen(os.dup(2), "w")  # the real terminal, not the redirected fd 2
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self):
        import time
        t0, frames, k = time.time(), "|/-\\", 0
        while not self.stop.wait(0.2):
            self.out.write(f"\r{frames[k % 4]} {self.label}  {time.time() - t0:.0f}s ")
            self.out.flush()
            k += 1

    def __exit__(self, *exc):
        if self.enabled:
            self.stop.set()
            self.thread.join()
            self.out.write("\r\033[K")
            self.out.close()