"""Tokenizers: one interface over the three files LLaMA-family checkpoints ship their vocabulary in.

    tok = load_tokenizer("tokenizer.model")      # SentencePiece (LLaMA's own)
    tok = load_tokenizer("tokenizer.json")       # HF `tokenizers`, or a directory holding either
    tok = load_tokenizer("model.gguf")           # the vocabulary inside a GGUF: `llama` (SentencePiece) or `gpt2` (BPE)
    ids = tok.encode("Hello world", bos=True)    # [1, 15043, 3186]
    tok.decode(ids)                              # "Hello world"

Two backends do the work: `spm` (the `sentencepiece` library) for SentencePiece models (a GGUF `llama`
vocabulary is turned back into the SentencePiece model it came from) and `hf` (the `tokenizers` library)
for everything else (a GGUF `gpt2` vocabulary becomes a byte-level BPE, see `gguf`). Special tokens
written in the text (`<s>`, `<|im_start|>`) map to their ids, as llama.cpp and transformers do.
`train_tokenizer` (`train`) trains LLaMA's tokenizer (§2: SentencePiece BPE, digits split, byte
fallback) and writes it in both formats.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tokenizers import Tokenizer as HFBackend

from ..bounded import read_json
from ..errors import LlamalabError
from .base import BYTE, CONTROL, END_OF_TURN, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, StreamDecoder, Tokenizer
from .base import check_vocab
from .gguf import open_gguf, read_gguf_tokenizer_fields, tokenizer_from_gguf_fields
from .hf import HFTokenizer
from .spm import SentencePieceTokenizer, sentencepiece_to_hf
from .train import LLAMA_TRAINER_SPEC, train_tokenizer

__all__ = ["Tokenizer", "StreamDecoder", "SentencePieceTokenizer", "HFTokenizer", "load_tokenizer", "find_tokenizer",
           "save_tokenizer", "train_tokenizer", "TOKENIZER_FILES", "open_gguf", "read_gguf_tokenizer_fields",
           "tokenizer_from_gguf_fields", "sentencepiece_to_hf", "check_vocab", "LLAMA_TRAINER_SPEC", "END_OF_TURN",
           "NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE"]

# The files a checkpoint directory keeps its tokenizer in: the vocabulary, and the side files that set its
# special tokens, chat template and generation stop tokens (all read by `load_tokenizer`).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


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
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise LlamalabError(f"{path}: invalid JSON ({e})") from None


def _token_content(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _hf_side_files(directory: Path):
    """(tokenizer_config, chat_template, extra stop ids from generation_config) of a HF directory."""
    cfg = {**_read_json(directory / "special_tokens_map.json"), **_read_json(directory / "tokenizer_config.json")}
    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t["template"] for t in template if isinstance(t, dict) and isinstance(t.get("template"), str)}
        if not named:
            raise LlamalabError(f"{directory / 'tokenizer_config.json'}: chat_template is a list without any "
                                "{\"name\": ..., \"template\": ...} entry; fix or remove it")
        template = named.get("default", next(iter(named.values())))
    if template is not None and not isinstance(template, str):
        raise LlamalabError(f"{directory / 'tokenizer_config.json'}: chat_template must be text, got {template!r:.60}")
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


def find_tokenizer(src) -> Tokenizer | None:
    """The tokenizer of `src`: a Tokenizer as is, or one loaded from a path (.gguf file, tokenizer file or
    checkpoint directory); None when `src` is None or carries no tokenizer (a GGUF file without a
    vocabulary, a directory without tokenizer.json / tokenizer.model)."""
    if src is None or isinstance(src, Tokenizer):
        return src
    src = Path(src)
    if src.is_file() and src.suffix == ".gguf":
        fields = read_gguf_tokenizer_fields(src)
        return tokenizer_from_gguf_fields(fields, source=str(src)) if "tokenizer.ggml.tokens" in fields else None
    if src.is_dir() and not any((src / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return None
    return load_tokenizer(src)


def save_tokenizer(src, out) -> Tokenizer | None:
    """Put the tokenizer of `src` (see `find_tokenizer`) into the directory `out` and return it. A
    directory's tokenizer files are copied as they are (nothing lost in translation); any other source is
    written by the Tokenizer itself."""
    tokenizer = find_tokenizer(src)
    if tokenizer is not None and not isinstance(src, Tokenizer) and Path(src).is_dir():
        for name in TOKENIZER_FILES:
            if (Path(src) / name).is_file():
                shutil.copy2(Path(src) / name, Path(out) / name)
    elif tokenizer is not None:
        tokenizer.save(out)
    return tokenizer
