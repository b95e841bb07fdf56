"""The SentencePiece backend: LLaMA's own `tokenizer.model` (and GGUF `llama` vocabularies rebuilt as one)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import sentencepiece as spm
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, processors

from ..atomic import write_bytes, write_text
from ..errors import LlamalabError
from .base import CONTROL, NORMAL, UNKNOWN, USER_DEFINED, Tokenizer


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (LLaMA's `tokenizer.model`, or a GGUF `llama` vocabulary rebuilt as one)."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, *, add_bos: bool = True, chat_template: str | None = None,
                 extra_stop_ids=(), num_threads: int | None = None):
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except Exception:  # sentencepiece raises RuntimeError/OSError with C++ internals
            raise LlamalabError("not a valid SentencePiece model (the file does not parse as one)") from None
        self.model_proto = model_proto
        self.num_threads = num_threads or min(8, os.cpu_count() or 1)
        n = self.sp.get_piece_size()
        ids = {name: (i if 0 <= i < n else None) for name, i in
               (("bos", self.sp.bos_id()), ("eos", self.sp.eos_id()), ("pad", self.sp.pad_id()),
                ("unk", self.sp.unk_id()))}
        # Pieces SentencePiece itself would cut up when they appear in text, but that llama.cpp and
        # transformers read as the one token: control tokens and <unk>.
        self.special = {self.sp.id_to_piece(i): i for i in range(n) if self.sp.is_control(i) or self.sp.is_unknown(i)}
        self._special_re = (re.compile("|".join(re.escape(p) for p in sorted(self.special, key=len, reverse=True)))
                            if self.special else None)
        super().__init__(vocab_size=n, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"], unk_id=ids["unk"],
                         add_bos=add_bos, chat_template=chat_template, extra_stop_ids=extra_stop_ids)

    def _encode_batch(self, texts, special):
        if not special or self._special_re is None:
            return self.sp.encode(texts, num_threads=self.num_threads)
        out: list = [None] * len(texts)
        plain = [i for i, t in enumerate(texts) if self._special_re.search(t) is None]
        for i, ids in zip(plain, self.sp.encode([texts[i] for i in plain], num_threads=self.num_threads)):
            out[i] = ids
        for i, t in enumerate(texts):
            if out[i] is None:
                out[i] = self._encode_with_special(t)
        return out

    def _encode_with_special(self, text: str) -> list[int]:
        # Each stretch of text between special tokens is encoded on its own, so it gets its own dummy
        # "▁" prefix — exactly what llama.cpp does (and transformers with legacy=True).
        ids, pos = [], 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                ids += self.sp.encode(text[pos:m.start()])
            ids.append(self.special[m.group()])
            pos = m.end()
        if pos < len(text):
            ids += self.sp.encode(text[pos:])
        return ids

    def decode(self, ids) -> str:
        return self.sp.decode(self._check_ids(ids))

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(self._check_ids([i])[0])

    def piece_to_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i) else i

    def proto(self):
        from sentencepiece import sentencepiece_model_pb2 as pb

        m = pb.ModelProto()
        m.ParseFromString(self.model_proto)
        return m

    def save(self, out_dir) -> Path:
        """tokenizer.model + an equivalent tokenizer.json + tokenizer_config.json / special_tokens_map.json."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_bytes(out / "tokenizer.model", self.model_proto)
        write_text(out / "tokenizer.json", self.to_hf().to_str(pretty=True))
        self._write_hf_config(out)
        return out

    def to_hf(self):
        """The same tokenizer as a `tokenizers.Tokenizer` (byte-fallback BPE, merges ordered by score)."""
        return sentencepiece_to_hf(self.proto(), add_bos=self.add_bos)

    def gguf_metadata(self) -> dict:
        m = self.proto()
        meta = {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": [p.piece for p in m.pieces],
            "tokenizer.ggml.scores": [float(p.score) for p in m.pieces],
            "tokenizer.ggml.token_type": [int(p.type) for p in m.pieces],
            "tokenizer.ggml.add_bos_token": bool(self.add_bos),
            "tokenizer.ggml.add_eos_token": False,
            "tokenizer.ggml.add_space_prefix": bool(m.normalizer_spec.add_dummy_prefix),
        }
        return self._gguf_special(meta)


def sentencepiece_to_hf(m, *, add_bos: bool = True):
    """A `tokenizers.Tokenizer` that encodes exactly like the SentencePiece BPE model `m` (a ModelProto).

    SentencePiece BPE merges the adjacent pair whose joined piece has the highest score; `tokenizers`
    merges the pair with the lowest merge rank, so the merges are every way of splitting a piece into two
    pieces, ranked by the joined piece's score. The dummy "▁" prefix is a normalizer (so text after a
    special token gets one too, like SentencePiece run on each stretch of text), byte fallback decodes
    `<0xNN>` pieces.
    """

    if m.trainer_spec.model_type != 2:  # BPE
        raise LlamalabError("only SentencePiece BPE models can be exported to tokenizer.json")
    vocab = {p.piece: i for i, p in enumerate(m.pieces)}
    mergeable = {p.piece: p.score for p in m.pieces if p.type in (NORMAL, USER_DEFINED)}
    merges = []
    for piece, score in mergeable.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in mergeable and right in mergeable:
                merges.append((-score, vocab[left], vocab[right], left, right))
    merges.sort()
    unk = next((p.piece for p in m.pieces if p.type == UNKNOWN), None)
    bpe = models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=unk, fuse_unk=True,
                     byte_fallback=bool(m.trainer_spec.byte_fallback))
    tok = tokenizers.Tokenizer(bpe)
    norm = [normalizers.Replace(Regex(" "), "▁")]
    if m.normalizer_spec.add_dummy_prefix:
        norm.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(norm)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if m.normalizer_spec.add_dummy_prefix else []))
    specials = [AddedToken(p.piece, special=p.type != USER_DEFINED, normalized=False)
                for p in m.pieces if p.type in (CONTROL, UNKNOWN, USER_DEFINED)]
    tok.add_special_tokens([t for t in specials if t.special])
    tok.add_tokens([t for t in specials if not t.special])
    bos = m.trainer_spec.bos_piece if m.trainer_spec.bos_id >= 0 else None
    if add_bos and bos in vocab:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])])
    return tok

