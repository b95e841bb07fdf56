"""Training LLaMA's tokenizer (the paper, §2 "Tokenizer"): SentencePiece BPE with LLaMA's settings.

    tok = train_tokenizer(["corpus.txt", "code.jsonl.gz"], 32000, "out/tok")   # writes tokenizer.model + .json
"""

from __future__ import annotations

import io
import os
import random
import re
import sys
import threading
import time
from pathlib import Path

import sentencepiece as spm
from tqdm import tqdm

from ..atomic import check_apart
from ..textio import iter_texts
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

    Inputs are read line by line by `llamalab.textio.iter_texts` (plain text, JSON Lines with a "text"
    field, tables; compressed or not) and streamed once: lines longer than `max_line_chars` are cut at a
    space, and a uniform sample of at most `input_sentence_size` lines (reservoir sampling, `seed`) goes
    to SentencePiece. `spec` overrides entries of LLAMA_TRAINER_SPEC.
    """
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise LlamalabError("no input files given")
    for p in inputs:
        if not p.is_file():
            raise LlamalabError(f"input file not found: {p}")
    check_apart(out_dir, inputs)
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise LlamalabError(f"vocab size {vocab_size} is too small: byte fallback alone needs 256 byte pieces "
                            f"plus <unk> <s> </s>; use at least {MIN_VOCAB} (LLaMA uses 32000)")
    sample, seen = sample_lines(inputs, input_sentence_size, max_line_chars, seed=seed, progress=progress)
    if not sample:
        raise LlamalabError(f"the input ({', '.join(map(str, inputs))}) holds no text to train on")
    chars = sum(map(len, sample))
    options = {**LLAMA_TRAINER_SPEC, **spec, "vocab_size": vocab_size, "input_sentence_size": input_sentence_size,
               "max_sentence_length": 4 * max_line_chars + 16, "num_threads": num_threads or os.cpu_count() or 1}
    model = io.BytesIO()
    t0 = time.time()
    with MergeProgress(vocab_size, f"training BPE on {seen:,} lines / {chars:,} chars", progress) as log:
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(sample), model_writer=model, **log, **options)
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[-1]
            msg = re.sub(r"^.*?\) \[[^\]]*\] ", "", msg)  # drop sentencepiece's "Internal: file.cc(123) [cond]"
            raise LlamalabError(f"SentencePiece training failed: {msg}") from None
    if progress:
        print(f"trained a {vocab_size}-piece BPE tokenizer in {time.time() - t0:.1f}s", file=sys.stderr)
    tok = SentencePieceTokenizer(model.getvalue(), add_bos=True, chat_template=chat_template)
    tok.save(out_dir)
    return tok


def sample_lines(inputs: list[Path], k: int, max_chars: int, *, seed: int = 0,
                 progress: bool = True) -> tuple[list[str], int]:
    """(a uniform sample of at most `k` of the inputs' non-blank lines, lines seen), by reservoir sampling;
    lines longer than `max_chars` count as pieces cut at a space."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    with tqdm(total=sum(p.stat().st_size for p in inputs), unit="B", unit_scale=True, desc="reading input",
              disable=not progress, leave=False) as bar:
        for path in inputs:
            for line in iter_texts(path, lines=True, on_read=bar.update):
                for chunk in _chunks(line, max_chars):
                    seen += 1
                    if len(sample) < k:
                        sample.append(chunk)
                    elif (j := rng.randrange(seen)) < k:
                        sample[j] = chunk
    return sample, seen


def _chunks(line: str, n: int):
    """`line` cut into pieces of at most `n` characters, at a space where there is one; blank lines skipped."""
    while len(line) > n:
        cut = line.rfind(" ", n // 2, n)
        cut = n if cut <= 0 else cut
        yield line[:cut]
        line = line[cut:]
    if line.strip():
        yield line


class MergeProgress:
    """A tqdm bar over the BPE merges while SentencePiece trains, driven by the trainer's own log.

    The trainer logs to standard error; its `logstream` option sends that into a pipe read here:
    "Alphabet size=N" fixes the number of merges (vocab size − meta pieces − N), "Merged: ... merges=M"
    reports progress. Entering gives the trainer's keyword arguments: the pipe, or, with progress off (or
    a standard error that is no file, as under pytest's capsys), `minloglevel` to silence the log.
    """

    def __init__(self, vocab_size: int, desc: str, enabled: bool = True):
        self.vocab_size, self.desc = vocab_size, desc
        try:
            self.enabled = enabled and sys.stderr.fileno() >= 0
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            self.enabled = False

    def __enter__(self) -> dict:
        if not self.enabled:
            return {"minloglevel": 1}
        read_fd, write_fd = os.pipe()
        self.log = os.fdopen(write_fd, "w")
        # the bar writes to its own copy of standard error: fd 2 itself goes into the pipe while training
        self.bar = tqdm(desc=self.desc, unit=" merges", file=os.fdopen(os.dup(sys.stderr.fileno()), "w"), leave=False)
        self.reader = threading.Thread(target=self._follow, args=(os.fdopen(read_fd, errors="replace"),), daemon=True)
        self.reader.start()
        return {"logstream": self.log}

    def _follow(self, log):
        with log:
            for line in log:
                if m := re.search(r"Alphabet size=(\d+)", line):
                    self.bar.reset(total=max(1, self.vocab_size - (MIN_VOCAB - 1) - int(m[1])))
                elif m := re.search(r"Merged: .*merges=(\d+)", line):
                    self.bar.update(int(m[1]) - self.bar.n)

    def __exit__(self, *exc):
        if self.enabled:
            self.log.close()  # the trainer has put fd 2 back: this was the pipe's last writer
            self.reader.join()
            self.bar.close()
            self.bar.fp.close()
