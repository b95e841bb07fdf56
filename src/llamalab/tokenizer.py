"""Tokenizers: one interface over the three files LLaMA-family checkpoints ship their vocabulary in.

    tok = load_tokenizer("tokenizer.model")      # SentencePiece (LLaMA's own)
    tok = load_tokenizer("tokenizer.json")       # HF `tokenizers`, or a directory holding either
    tok = load_tokenizer("model.gguf")           # the vocabulary inside a GGUF: `llama` (SentencePiece) or `gpt2` (BPE)
    ids = tok.encode("Hello world", bos=True)    # [1, 15043, 3186]
    tok.decode(ids)                              # "Hello world"

Two backends do the work: `sentencepiece` for SentencePiece models (a GGUF `llama` vocabulary is turned
back into the SentencePiece model it came from) and `tokenizers` for everything else (a GGUF `gpt2`
vocabulary becomes a byte-level BPE). Special tokens written in the text (`<s>`, `<|im_start|>`) map to
their ids, as llama.cpp and transformers do. `train_tokenizer` trains LLaMA's tokenizer (§2: SentencePiece
BPE, digits split, byte fallback) and writes it in both formats.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .atomic import write_bytes, write_text
from .errors import LlamalabError

# GGUF `tokenizer.ggml.token_type` values; SentencePiece's ModelProto.SentencePiece.Type uses the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Tokens that end a turn in common chat formats: generation stops on them as well as on EOS.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


class Tokenizer:
    """text ⇄ token ids. Subclasses provide `_encode_batch`, `decode`, `id_to_piece`, `save`, `gguf_metadata`.

    Attributes: vocab_size; bos_id, eos_id, pad_id, unk_id (None when absent); stop_ids (EOS plus
    end-of-turn tokens); add_bos (the checkpoint's default for prompts); chat_template (Jinja or None).
    """

    kind: str

    def __init__(self, *, vocab_size: int, bos_id: int | None, eos_id: int | None, pad_id: int | None = None,
                 unk_id: int | None = None, add_bos: bool = False, chat_template: str | None = None,
                 extra_stop_ids=()):
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.add_bos = add_bos
        self.chat_template = chat_template
        stops = {eos_id, *extra_stop_ids}
        for piece in END_OF_TURN:
            stops.add(self.piece_to_id(piece))
        self.stop_ids: set[int] = {i for i in stops if i is not None}

    # -- backend hooks --------------------------------------------------------------------------------
    def _encode_batch(self, texts: list[str], special: bool) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        """Text of `ids`; control tokens (BOS, EOS, `<|im_end|>` ...) are not shown."""
        raise NotImplementedError

    def id_to_piece(self, i: int) -> str:
        raise NotImplementedError

    def piece_to_id(self, piece: str) -> int | None:
        raise NotImplementedError

    def save(self, out_dir) -> Path:
        raise NotImplementedError

    def gguf_metadata(self) -> dict:
        raise NotImplementedError

    def _gguf_special(self, meta: dict) -> dict:
        """Add the special-token ids and the chat template to a backend's tokenizer.ggml.* fields."""
        for key, i in (("bos", self.bos_id), ("eos", self.eos_id), ("unknown", self.unk_id), ("padding", self.pad_id)):
            if i is not None:
                meta[f"tokenizer.ggml.{key}_token_id"] = int(i)
        if self.chat_template:
            meta["tokenizer.chat_template"] = self.chat_template
        return meta

    # -- shared ---------------------------------------------------------------------------------------
    @property
    def bos_token(self) -> str | None:
        return None if self.bos_id is None else self.id_to_piece(self.bos_id)

    @property
    def eos_token(self) -> str | None:
        return None if self.eos_id is None else self.id_to_piece(self.eos_id)

    @property
    def pad_token(self) -> str | None:
        return None if self.pad_id is None else self.id_to_piece(self.pad_id)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, special: bool = True) -> list[int]:
        """Token ids of `text`, with BOS/EOS if asked. `special=False` reads `<s>` etc. as plain text."""
        return self.encode_batch([text], bos=bos, eos=eos, special=special)[0]

    def encode_batch(self, texts: list[str], *, bos: bool = False, eos: bool = False,
                     special: bool = True) -> list[list[int]]:
        """`encode` for many texts at once, multi-threaded in the backend: use it for bulk data."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts")
        out = self._encode_batch(list(texts), special)
        if bos or eos:
            for name, wanted, i in (("BOS", bos, self.bos_id), ("EOS", eos, self.eos_id)):
                if wanted and i is None:
                    raise LlamalabError(f"this tokenizer has no {name} token; encode without {name.lower()}=True")
            head, tail = [self.bos_id] if bos else [], [self.eos_id] if eos else []
            out = [head + ids + tail for ids in out]
        return out

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise LlamalabError(f"token id {bad[0]} is outside this tokenizer's vocabulary (0..{self.vocab_size - 1})")
        return ids

    def _special_tokens_config(self) -> dict:
        """The `tokenizer_config.json` HF users expect next to `tokenizer.json`."""
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.bos_token,
               "eos_token": self.eos_token, "pad_token": self.pad_token,
               "unk_token": None if self.unk_id is None else self.id_to_piece(self.unk_id),
               "add_bos_token": self.add_bos, "add_eos_token": False,
               "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30}
        if self.chat_template:
            cfg["chat_template"] = self.chat_template
        return cfg

    def _write_hf_config(self, out: Path):
        cfg = self._special_tokens_config()
        write_text(out / "tokenizer_config.json", json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        smap = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if cfg[k] is not None}
        write_text(out / "special_tokens_map.json", json.dumps(smap, indent=2, ensure_ascii=False) + "\n")

    def __repr__(self):
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
                f"pad_id={self.pad_id}, add_bos={self.add_bos})")


class StreamDecoder:
    """Decode tokens one at a time while they are generated.

    `push(id)` returns the text completed by that token; concatenating every `push` and the final
    `flush()` gives exactly `tokenizer.decode(all_ids)`. Text is held back while it ends in an incomplete
    UTF-8 character (a byte-fallback or byte-level token carrying part of one). Each step decodes only
    the new tokens plus the last visible ones before them as context and emits the difference, so
    SentencePiece's leading-space rule ("▁" at the start of a decode is dropped) applies as in a full decode.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.start = 0          # context window starts here ...
        self.done = 0           # ... and everything before `done` has been emitted
        self.prefix_text = ""   # decode(ids[start:done])
        self.emitted = 0        # characters returned so far

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tok.decode(self.ids[self.start:])
        if text.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the rest of its bytes
        if not text.startswith(self.prefix_text):  # not seen with the tokenizers here; resync on a full decode
            self.start, self.prefix_text = 0, self.tok.decode(self.ids[:self.done])[:self.emitted]
            text = self.tok.decode(self.ids)
        new = text[len(self.prefix_text):]
        self.emitted += len(new)
        # Move the window up to the new tokens only if they show text: a window may not begin with
        # tokens that decode to nothing (BOS, a lone "▁"), or the next decode would drop a space.
        tail = self.tok.decode(self.ids[self.done:])
        if tail:
            self.start, self.prefix_text = self.done, tail
        else:
            self.prefix_text = text
        self.done = len(self.ids)
        return new

    def flush(self) -> str:
        """The text still held back (an incomplete character at the end decodes as U+FFFD)."""
        text = self.tok.decode(self.ids[self.start:])
        if not text.startswith(self.prefix_text):
            text, self.prefix_text = self.tok.decode(self.ids), self.tok.decode(self.ids)[:self.emitted]
        new = text[len(self.prefix_text):]
        self.emitted += len(new)
        self.start = self.done = len(self.ids)
        self.prefix_text = ""
        return new


# ---------------------------------------------------------------------------------------------------
# SentencePiece backend
# ---------------------------------------------------------------------------------------------------
class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (LLaMA's `tokenizer.model`, or a GGUF `llama` vocabulary rebuilt as one)."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, *, add_bos: bool = True, chat_template: str | None = None,
                 extra_stop_ids=(), num_threads: int | None = None):
        import sentencepiece as spm

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
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, processors
    from tokenizers import Tokenizer as HFTokenizer

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
    tok = HFTokenizer(bpe)
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


# ---------------------------------------------------------------------------------------------------
# HF `tokenizers` backend
# ---------------------------------------------------------------------------------------------------
class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (an HF `tokenizer.json`, or a GGUF `gpt2` vocabulary rebuilt as one)."""

    kind = "hf"

    def __init__(self, tok, *, bos_id=None, eos_id=None, pad_id=None, unk_id=None, add_bos=False,
                 chat_template=None, extra_stop_ids=(), gguf_pre: str | None = None):
        self.tok = tok
        self.gguf_pre = gguf_pre
        self._special_ids = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        super().__init__(vocab_size=tok.get_vocab_size(with_added_tokens=True), bos_id=bos_id, eos_id=eos_id,
                         pad_id=pad_id, unk_id=unk_id, add_bos=add_bos, chat_template=chat_template,
                         extra_stop_ids=extra_stop_ids)

    def _encode_batch(self, texts, special):
        self.tok.encode_special_tokens = not special
        try:
            return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]
        finally:
            self.tok.encode_special_tokens = False

    def decode(self, ids) -> str:
        return self.tok.decode(self._check_ids(ids), skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        return self.tok.id_to_token(self._check_ids([i])[0])

    def piece_to_id(self, piece: str) -> int | None:
        return self.tok.token_to_id(piece)

    def save(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "tokenizer.json", self.tok.to_str(pretty=True))
        self._write_hf_config(out)
        return out

    def gguf_metadata(self) -> dict:
        """tokenizer.ggml.* for a byte-level BPE (`gpt2`) or a SentencePiece-style BPE (`llama`) tokenizer.json."""
        spec = json.loads(self.tok.to_str())
        model = spec["model"]
        if model.get("type") != "BPE":
            raise LlamalabError(f"cannot describe a {model.get('type')} tokenizer.json as a GGUF vocabulary")
        added = self.tok.get_added_tokens_decoder()
        tokens = [self.tok.id_to_token(i) for i in range(self.vocab_size)]
        types = [(CONTROL if added[i].special else USER_DEFINED) if i in added else NORMAL
                 for i in range(self.vocab_size)]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        meta = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                "tokenizer.ggml.add_bos_token": bool(self.add_bos), "tokenizer.ggml.add_eos_token": False}
        if model.get("byte_fallback"):  # SentencePiece-style: llama.cpp ranks merges by score
            rank = {a + b: r for r, (a, b) in enumerate(m.split(" ", 1) for m in merges)}
            meta["tokenizer.ggml.model"] = "llama"
            meta["tokenizer.ggml.pre"] = "default"
            meta["tokenizer.ggml.scores"] = [-float(rank.get(t, len(rank))) for t in tokens]
            meta["tokenizer.ggml.token_type"] = [BYTE if re.fullmatch(r"<0x[0-9A-F]{2}>", t) else ty
                                                 for t, ty in zip(tokens, types)]
            if self.unk_id is not None:
                meta["tokenizer.ggml.token_type"][self.unk_id] = UNKNOWN
        else:
            meta["tokenizer.ggml.model"] = "gpt2"
            meta["tokenizer.ggml.pre"] = self.gguf_pre or "default"
            meta["tokenizer.ggml.merges"] = merges
        return self._gguf_special(meta)


# ---------------------------------------------------------------------------------------------------
# GGUF vocabularies
# ---------------------------------------------------------------------------------------------------
def read_gguf_tokenizer_fields(path) -> dict:
    """The `tokenizer.*` metadata of a GGUF file as plain Python values."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise LlamalabError(f"{path}: not a readable GGUF file (truncated or corrupt: {type(e).__name__})") from None
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


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
        tok = byte_level_bpe(tokens, merges, types, pre)
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
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab = {t: i for i, t in enumerate(tokens)}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
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


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------
def load_tokenizer(path) -> Tokenizer:
    """The tokenizer in `path`: a `tokenizer.model`, a `tokenizer.json`, a `.gguf` file, or a directory
    holding one of them (a HF or Meta checkpoint directory)."""
    path = Path(path)
    if not path.exists():
        raise LlamalabError(f"tokenizer not found: {path} does not exist")
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return load_tokenizer(ggufs[0])
        raise LlamalabError(f"{path}: no tokenizer.json, tokenizer.model or single .gguf file in this directory")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return tokenizer_from_gguf_fields(read_gguf_tokenizer_fields(path), source=str(path))
    if path.suffix == ".json":
        return _load_hf(path)
    if path.suffix == ".model" or magic[:1] == b"\x0a":  # a serialized ModelProto starts with field 1 (pieces)
        return _load_sentencepiece(path)
    raise LlamalabError(f"{path}: not a tokenizer file (expected tokenizer.model, tokenizer.json or .gguf)")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise LlamalabError(f"{path}: invalid JSON ({e})") from None


def _token_content(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _hf_side_files(directory: Path):
    """(tokenizer_config, chat_template, extra stop ids from generation_config) of a HF directory."""
    cfg = {**_read_json(directory / "special_tokens_map.json"), **_read_json(directory / "tokenizer_config.json")}
    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
    if (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    gen_eos = _read_json(directory / "generation_config.json").get("eos_token_id")
    stops = gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
    return cfg, template, stops


def _load_sentencepiece(path: Path) -> SentencePieceTokenizer:
    cfg, template, stops = _hf_side_files(path.parent)
    try:
        return SentencePieceTokenizer(path.read_bytes(), add_bos=bool(cfg.get("add_bos_token", True)),
                                      chat_template=template, extra_stop_ids=stops)
    except LlamalabError as e:
        raise LlamalabError(f"{path}: {e}; expected a SentencePiece tokenizer.model") from None


def _load_hf(path: Path) -> HFTokenizer:
    from tokenizers import Tokenizer as HFBackend

    try:
        tok = HFBackend.from_file(str(path))
    except Exception as e:
        raise LlamalabError(f"{path}: not a valid tokenizer.json ({str(e).strip()[:200]})") from None
    cfg, template, stops = _hf_side_files(path.parent)

    def tid(name):
        content = _token_content(cfg.get(name))
        return tok.token_to_id(content) if content is not None else None

    bos_id, eos_id = tid("bos_token"), tid("eos_token")
    if "add_bos_token" in cfg:
        add_bos = bool(cfg["add_bos_token"])
    else:  # ask the tokenizer's own post-processor
        probe = tok.encode("a", add_special_tokens=True).ids
        add_bos = bool(probe) and bos_id is not None and probe[0] == bos_id
        if bos_id is None and probe and probe[0] in {i for i, t in tok.get_added_tokens_decoder().items() if t.special}:
            bos_id, add_bos = probe[0], True
    return HFTokenizer(tok, bos_id=bos_id, eos_id=eos_id, pad_id=tid("pad_token"), unk_id=tid("unk_token"),
                       add_bos=add_bos, chat_template=template, extra_stop_ids=[s for s in stops if s is not None])


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int, what: str = "the model") -> None:
    """Raise a clear error unless every token id fits the model's embedding (a padded embedding is fine)."""
    if tokenizer.vocab_size > model_vocab_size:
        raise LlamalabError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but {what} has an embedding for only "
            f"{model_vocab_size}: they do not belong together; pass the tokenizer the model was trained with")


# ---------------------------------------------------------------------------------------------------
# Training (the paper, §2 "Tokenizer")
# ---------------------------------------------------------------------------------------------------
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
