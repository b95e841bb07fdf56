"""GGUF vocabularies: the `tokenizer.ggml.*` fields of a GGUF file as a SentencePiece or byte-level BPE tokenizer."""

from __future__ import annotations

import functools

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from ..errors import LlamalabError
from ..headers import check_gguf
from .base import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, Tokenizer
from .hf import HFTokenizer
from .spm import SentencePieceTokenizer


@functools.cache
def _reader_class():
    """`gguf.GGUFReader` parsing from a plain ndarray view of its map: numpy's memmap subclass costs microseconds
    per field element, seconds for a 32000-token vocabulary. `mapped` keeps the np.memmap (and its mmap)."""
    import numpy as np
    from gguf import GGUFReader

    class Reader(GGUFReader):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, value):
            self.mapped, self._plain = value, value.view(np.ndarray)

    return Reader


def open_gguf(path, mode: str = "r"):
    """A `gguf.GGUFReader` on `path` (memory-mapped), or one clear error for a damaged or partial file.
    The header is checked against the file first (`headers.check_gguf`): the reader trusts its counts.
    mode "c": a copy-on-write map (writable arrays whose writes never reach the file)."""
    check_gguf(path)
    try:
        return _reader_class()(path, mode)
    except Exception as e:  # the gguf package raises assorted errors on damaged files
        raise LlamalabError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); "
                            "is it truncated or still downloading?") from None


def read_gguf_tokenizer_fields(path) -> dict:
    """The `tokenizer.*` metadata of a GGUF file as plain Python values."""
    return {k: f.contents() for k, f in open_gguf(path).fields.items() if k.startswith("tokenizer.")}


def tokenizer_from_gguf_fields(meta: dict, source="GGUF file") -> Tokenizer:
    """A Tokenizer from GGUF `tokenizer.ggml.*` fields (as read by `read_gguf_tokenizer_fields`)."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if kind is None or not tokens:
        raise LlamalabError(f"{source} carries no tokenizer (no tokenizer.ggml.model/tokens); "
                            "pass --tokenizer with a tokenizer.model or tokenizer.json")
    n = len(tokens)
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * n)

    def tid(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return int(i) if i is not None and 0 <= int(i) < n else None

    stops = [tid("eot"), tid("eom")]
    template = meta.get("tokenizer.chat_template")
    if kind == "llama":
        from sentencepiece import sentencepiece_model_pb2 as pb

        scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * n)
        m = pb.ModelProto()
        for piece, score, ty in zip(tokens, scores, types):
            m.pieces.add(piece=piece, score=float(score), type=int(ty) if int(ty) in (1, 2, 3, 4, 5, 6) else NORMAL)
        ts = m.trainer_spec
        ts.model_type = 2  # BPE
        ts.vocab_size = n
        ts.byte_fallback = BYTE in types
        for name, key in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
            i = tid(key)
            setattr(ts, f"{name}_id", -1 if i is None else i)
            if i is not None:
                setattr(ts, f"{name}_piece", tokens[i])
        if tid("unknown") is None:  # SentencePiece needs an unknown piece; use the first UNKNOWN-typed one
            ts.unk_id = next((i for i, t in enumerate(types) if t == UNKNOWN), 0)
        ns = m.normalizer_spec
        ns.name = "identity"
        ns.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        ns.remove_extra_whitespaces = False
        ns.escape_whitespaces = True
        return SentencePieceTokenizer(m.SerializeToString(), add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
                                      chat_template=template, extra_stop_ids=stops)
    if kind == "gpt2":
        merges = meta.get("tokenizer.ggml.merges")
        if not merges:
            raise LlamalabError(f"{source}: a gpt2 vocabulary without tokenizer.ggml.merges")
        pre = meta.get("tokenizer.ggml.pre", "default")
        try:
            tok = byte_level_bpe(tokens, merges, types, pre)
        except BaseException as e:  # the Rust library panics (a BaseException) on bad merges
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise LlamalabError(f"{source}: the gpt2 vocabulary is inconsistent ({str(e).splitlines()[0][:160]}); "
                                "the file is damaged") from None
        return HFTokenizer(tok, bos_id=tid("bos"), eos_id=tid("eos"), pad_id=tid("padding"), unk_id=tid("unknown"),
                           add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)), chat_template=template,
                           extra_stop_ids=stops, gguf_pre=pre)
    raise LlamalabError(f"{source}: unsupported GGUF tokenizer kind {kind!r} (supported: llama, gpt2)")


# Pre-tokenizer regexes per `tokenizer.ggml.pre` (llama.cpp's llama-vocab.cpp), beyond GPT-2's own.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
               "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}
# These first split every digit off on its own, then apply GPT-2's regex (SmolLM2's own tokenizer.json
# is exactly Digits(individual_digits) + ByteLevel).
_PRE_DIGITS = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}


def byte_level_bpe(tokens, merges, types, pre: str = "default"):
    """A GPT-2 style byte-level BPE `tokenizers.Tokenizer` from a GGUF vocabulary."""

    vocab = {t: i for i, t in enumerate(tokens)}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                                 byte_fallback=False, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _PRE_SPLITS)
    if pre in _PRE_SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), "isolated"),
                                                     byte_level])
    elif pre in _PRE_DIGITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    return tok

