"""The HF `tokenizers` backend: a `tokenizer.json` (and GGUF `gpt2` vocabularies rebuilt as one)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..atomic import write_text
from ..errors import LlamalabError
from .base import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, Tokenizer


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

