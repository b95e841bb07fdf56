"""The `Tokenizer` interface every backend implements, and the streaming decoder built on it."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_text
from ..errors import LlamalabError

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


def check_vocab(vocab_size: int, model_vocab_size: int, *, what: str, fix: str) -> None:
    """Every token id needs a row in the model's embedding (a padded, larger embedding is fine)."""
    if vocab_size > model_vocab_size:
        raise LlamalabError(f"{what} has {vocab_size} tokens but the model embeds only {model_vocab_size}; {fix}")
