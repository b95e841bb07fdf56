"""Constrained decoding: a JSON schema (or "any JSON object") → a per-sequence mask of the tokens allowed next.

    grammar = compile_json(tokenizer, schema)      # checked and compiled once per request (LlamalabError if bad)
    matcher = grammar.start()                      # one per sequence (a cheap copy of the compiled matcher)
    matcher.fill(bitmask, row); matcher.accept(token)   # the engine: mask the row's logits, then advance

The library is llguidance (Microsoft's Rust grammar engine, no Python dependencies), picked by measurement:
`python bench/structured.py --quick` (SmolLM2's 49152-token vocabulary, one thread, on a shared 2-core
machine: contended numbers, the ratios are what counts) gave, for an object schema of five typed properties,

    llguidance      compile    3.2 ms   mask per token 0.012 ms (median)
    outlines-core   compile  149.0 ms   mask per token 0.062 ms (median)
    engine decode, greedy, 24 tokens:  batch 1  28.6 → 26.6 tok/s with a schema (0.93x)
                                       batch 8  36.3 → 38.4 tok/s with a schema (1.06x, noise)

outlines-core also compiles a regex into a DFA over the whole vocabulary (its cost grows with every optional
property) and cannot express "any JSON object" (OpenAI's `json_object`: recursion is not regular).
xgrammar was not measured: it requires torch, transformers and triton from the registry (a second stack).

Checks (each a LlamalabError, the server's 400): the schema is a JSON object that passes the JSON Schema
metaschema (`jsonschema`, draft 2020-12 unless `$schema` names another), at most MAX_SCHEMA_CHARS of JSON and
MAX_DEPTH levels deep; llguidance's own compile error as one line; and compilation is bounded by
llguidance's parser limits (grammar size, lexer fuel) and by COMPILE_SECONDS of wall clock, so a pathological
schema fails fast instead of taking minutes (measured: 2000 optional properties 1.5 s, 60 alternatives of 20
properties 1.0 s, regexes such as `(.*a){40}` or `[a-z]{1000,50000}` milliseconds: lazy automata).
Compiled grammars are cached per tokenizer and schema (CACHE of them).

The tokenizer bridge (`token_bytes`) gives llguidance every token as the bytes it stands for: GPT-2 style
byte-level BPE (SmolLM2, LLaMA 3) through the byte↔unicode table; SentencePiece pieces with "▁" as a space and
byte-fallback pieces `<0xAB>` as that byte; control tokens as 0xFF + their text (llguidance's mark for a
special token, never produced by a grammar).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

import llguidance
import llguidance.numpy
import torch
from jsonschema import validators
from jsonschema.exceptions import SchemaError

from .bounded import read_json
from .errors import LlamalabError

MAX_SCHEMA_CHARS = 64 * 1024  # a schema's JSON text
MAX_DEPTH = 24                # nesting of objects/arrays in a schema
COMPILE_SECONDS = 10.0        # a grammar not compiled by then is refused (the compilation ends on its own)
LIMITS = dict(max_grammar_size=200_000, initial_lexer_fuel=2_000_000, step_lexer_fuel=400_000,
              max_lexer_states=100_000)
JSON_OPTIONS = {"whitespace_flexible": False,  # compact JSON (no free whitespace): the model cannot pad forever
                "coerce_one_of": True}       # oneOf is followed as anyOf (exclusivity is not enforced)
_lock = threading.Lock()


# ------------------------------------------------------------------------------------- tokenizer bridge
def _byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the printable character each byte is written as → the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _spm_piece(piece: str) -> bytes:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def token_bytes(tokenizer) -> list[bytes]:
    """Every token id's bytes (special tokens: 0xFF + their text), for a SentencePiece or HF tokenizer."""
    if hasattr(tokenizer, "sp"):  # SentencePiece
        sp = tokenizer.sp
        return [b"\xff" + sp.id_to_piece(i).encode() if sp.is_control(i) or sp.is_unknown(i)
                else _spm_piece(sp.id_to_piece(i)) for i in range(tokenizer.vocab_size)]
    tok = tokenizer.tok  # HF tokenizers
    added = tok.get_added_tokens_decoder()
    byte_level = "ByteLevel" in json.dumps(json.loads(tok.to_str()).get("decoder"))
    table = _byte_decoder()
    out = []
    for i in range(tokenizer.vocab_size):
        piece = tok.id_to_token(i) or ""
        if i in added:
            out.append((b"\xff" if added[i].special else b"") + added[i].content.encode())
        elif byte_level:
            out.append(bytes(table[c] for c in piece) if all(c in table for c in piece) else piece.encode())
        else:
            out.append(_spm_piece(piece))
    return out


class _Wrapped:
    """The shape llguidance's TokenizerWrapper reads: tokens as bytes, EOS, and a text → ids function."""

    def __init__(self, tokenizer):
        self.tokens = token_bytes(tokenizer)
        stops = sorted(tokenizer.stop_ids)
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else (stops[0] if stops else 0)
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = [i for i, t in enumerate(self.tokens) if t.startswith(b"\xff")]
        self._tokenizer = tokenizer

    def __call__(self, text):
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, special=False)


_bridges: dict[int, tuple[object, llguidance.LLTokenizer]] = {}


def ll_tokenizer(tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of `tokenizer` (built once per tokenizer object: ~1 s for a 50K vocabulary)."""
    with _lock:
        hit = _bridges.get(id(tokenizer))
        if hit is None or hit[0] is not tokenizer:
            wrapped = llguidance.TokenizerWrapper(_Wrapped(tokenizer))
            hit = (tokenizer, llguidance.LLTokenizer(wrapped, n_vocab=tokenizer.vocab_size,
                                                     eos_token=sorted(tokenizer.stop_ids) or None))
            _bridges[id(tokenizer)] = hit
        return hit[1]


# ------------------------------------------------------------------------------------------ checks
def _depth(x, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(x, dict):
        return max((_depth(v, level + 1) for v in x.values()), default=level)
    if isinstance(x, list):
        return max((_depth(v, level + 1) for v in x), default=level)
    return level


def check_schema(schema, where: str = "schema") -> None:
    """A JSON schema we accept: an object, bounded in size and depth, valid against its metaschema."""
    if not isinstance(schema, dict):
        raise LlamalabError(f"{where}: a JSON schema must be a JSON object, got {type(schema).__name__}")
    size = len(json.dumps(schema))
    if size > MAX_SCHEMA_CHARS:
        raise LlamalabError(f"{where}: the schema has {size} characters of JSON; at most {MAX_SCHEMA_CHARS}")
    if _depth(schema) > MAX_DEPTH:
        raise LlamalabError(f"{where}: the schema nests deeper than {MAX_DEPTH} levels")
    validator = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except SchemaError as e:
        at = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise LlamalabError(f"{where} is not a valid JSON schema at {at}: {e.message[:200]}") from None


def read_schema(path) -> dict:
    """A JSON schema from a file (bounded like every JSON input), checked."""
    try:
        schema = read_json(path)
    except OSError as e:
        raise LlamalabError(f"{path}: cannot read the JSON schema ({e.strerror or e})") from None
    except ValueError as e:
        raise LlamalabError(f"{path}: not a JSON document ({e}); a JSON schema is a JSON object") from None
    check_schema(schema, str(path))
    return schema


# ---------------------------------------------------------------------------------------- grammars
class Grammar:
    """A compiled grammar; `start()` gives each sequence its own matcher."""

    def __init__(self, tokenizer, grammar: str, what: str, schema: dict | None = None):
        self.vocab_size = tokenizer.vocab_size
        self.schema = schema  # what it was compiled from (None: any JSON object), for other ranks to compile
        limits = llguidance.LLParserLimits(**LIMITS, verbose_errors=False)
        lltok, built = ll_tokenizer(tokenizer), []
        worker = threading.Thread(target=lambda: built.append(
            llguidance.LLMatcher(lltok, grammar, log_level=0, limits=limits)), daemon=True)
        worker.start()  # llguidance compiles without the GIL
        worker.join(COMPILE_SECONDS)
        if not built:
            raise LlamalabError(f"{what} took more than {COMPILE_SECONDS:g} s to compile into a grammar; simplify it")
        self._proto = built[0]
        if self._proto.is_error():
            raise LlamalabError(f"{what} cannot be compiled into a grammar: {_one_line(self._proto.get_error())}")

    def start(self) -> "Matcher":
        return Matcher(self._proto.deep_copy())


class Matcher:
    """One sequence's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.m = matcher

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into row `row` of an int32 bitmask (bit set = allowed). Through the
        bitmask's numpy view (the same memory): `llguidance.torch` would import torch.compile's whole stack
        (~2.5 s of CPU in every process) for one module-level decorator we never call."""
        llguidance.numpy.fill_next_token_bitmask(self.m, bitmask.numpy(), row)

    def accept(self, token: int) -> None:
        if not self.m.consume_token(token) or self.m.is_error():
            raise LlamalabError(f"the grammar refused token {token}: {_one_line(self.m.get_error())}")

    @property
    def finished(self) -> bool:
        return self.m.is_stopped()


def _one_line(message: str) -> str:
    return " ".join(str(message).split())[:300]


def allowed(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """The bitmask (B, ceil(V/32)) int32 as bool (B, vocab): True where a token is allowed."""
    bits = torch.arange(32, dtype=torch.int32)
    unpacked = (bitmask[:, :, None] >> bits) & 1
    out = unpacked.reshape(bitmask.shape[0], -1).bool()
    if out.shape[1] < vocab:
        out = torch.cat([out, out.new_zeros(out.shape[0], vocab - out.shape[1])], 1)
    return out[:, :vocab]


def new_bitmask(rows: int, vocab: int) -> torch.Tensor:
    return torch.full((rows, (vocab + 31) // 32), -1, dtype=torch.int32)


CACHE = 64
_cache: OrderedDict = OrderedDict()


def compile_json(tokenizer, schema: dict | None, what: str = "schema") -> Grammar:
    """A grammar for JSON text matching `schema` (None: any JSON object, OpenAI's `json_object`)."""
    key = (id(tokenizer), json.dumps(schema, sort_keys=True), what)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] is tokenizer:
            _cache.move_to_end(key)
            return hit[1]
    compiled = _compile_json(tokenizer, schema, what)
    with _lock:
        _cache[key] = (tokenizer, compiled)
        while len(_cache) > CACHE:
            _cache.popitem(last=False)
    return compiled


def _compile_json(tokenizer, schema: dict | None, what: str) -> Grammar:
    if schema is None:
        schema = {"type": "object"}
    else:
        check_schema(schema, what)
    try:
        source = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as e:
        raise LlamalabError(f"{what} cannot be compiled into a grammar: {_one_line(e)}") from None
    return Grammar(tokenizer, source, what, schema)
