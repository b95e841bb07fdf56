"""Checkpoint formats and the one loader: `llamalab.load(path)`.

Each format module (`meta`, `hf`, `gguf`) has `load_state(path) -> (state_dict, ModelArgs, extra)` in
our parameter names and layout, and `save(state_dict, args, out, ...)`. `load` sniffs the format,
checks every tensor against the config, and materializes the model straight from the tensors
(built on the meta device: no memory spent on a throwaway random init).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelArgs
from ..errors import LlamalabError
from ..model import Transformer

FORMATS = ("gguf", "hf", "meta")


@dataclass
class Checkpoint:
    model: Transformer
    args: ModelArgs
    tokenizer: object | None  # llamalab.tokenizer.Tokenizer
    format: str  # "gguf" | "hf" | "meta"
    metadata: dict = field(default_factory=dict)
    path: Path | None = None


def _format_module(fmt: str):
    from . import gguf, hf, meta
    return {"gguf": gguf, "hf": hf, "meta": meta}[fmt]


def detect_format(path: Path) -> tuple[str, Path]:
    """(format, the path its reader takes). A file inside an HF/Meta directory means that directory."""
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF" or path.suffix == ".gguf":  # the GGUF reader explains a bad file
                return "gguf", path
        if path.suffix in (".safetensors", ".json", ".pth", ".model"):
            path = path.parent
        else:
            raise LlamalabError(f"{path}: not a checkpoint (expected a .gguf file, or an HF or Meta directory)")
    if (path / "params.json").is_file() and any(path.glob("consolidated.*.pth")):
        return "meta", path
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "hf", path
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf", ggufs[0]
    found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
    raise LlamalabError(f"{path}: no checkpoint found (want params.json + consolidated.*.pth, config.json + "
                        f"*.safetensors, or one .gguf file; found {found})")


def resolve(path_or_id) -> Path:
    """A local path, or a hub id ("org/name") downloaded with huggingface_hub when no such path exists."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    if isinstance(path_or_id, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", path_or_id):
        try:
            from huggingface_hub import snapshot_download
            return Path(snapshot_download(path_or_id, allow_patterns=[
                "*.json", "*.safetensors", "tokenizer.model", "*.gguf"]))
        except Exception as e:
            raise LlamalabError(f"{path_or_id}: no such local path, and downloading it from the hub "
                                f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    raise LlamalabError(f"{path}: no such file or directory")


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Transformer(args)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if args.tie_embeddings:
        del shapes["output.weight"]
    return shapes


def check_state(state: dict[str, torch.Tensor], args: ModelArgs, where) -> None:
    """Every tensor present, none extra, each with the shape the config implies."""
    want = expected_shapes(args)
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    if missing:
        raise LlamalabError(f"{where}: missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if extra:
        raise LlamalabError(f"{where}: unexpected tensors {extra[:4]}{' ...' if len(extra) > 4 else ''}")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise LlamalabError(f"{where}: tensor {k} has shape {tuple(state[k].shape)} but the config "
                                f"implies {shape}; config and weights disagree")


def build_model(state: dict[str, torch.Tensor], args: ModelArgs, *, device="cpu",
                dtype=torch.float32) -> Transformer:
    """The Transformer whose parameters are these tensors (cast to dtype, moved to device)."""
    with torch.device("meta"):
        model = Transformer(args)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()},
                          strict=not args.tie_embeddings, assign=True)
    model.tie_weights()
    model.init_buffers(device)
    return model.eval()


def tokenizer_source(fmt: str, path: Path) -> Path | None:
    """Where a checkpoint's tokenizer lives: the GGUF file itself, or its directory if it has tokenizer files."""
    if fmt == "gguf":
        return path
    for name in ("tokenizer.json", "tokenizer.model"):
        if (path / name).is_file():
            return path
    return None


def load_tokenizer_for(fmt: str, path: Path, vocab_size: int, extra: dict | None = None):
    """The checkpoint's tokenizer, or None when it ships none. `extra` from `load_state` saves
    re-reading a GGUF file (its tokenizer.* fields are already there)."""
    fields = (extra or {}).get("tokenizer_fields")
    if fields is not None:
        from ..tokenizer import tokenizer_from_gguf_fields
        tok = tokenizer_from_gguf_fields(fields, source=str(path)) if "tokenizer.ggml.tokens" in fields else None
    else:
        tok = as_tokenizer(tokenizer_source(fmt, path))
    if tok is not None and tok.vocab_size > vocab_size:
        raise LlamalabError(f"{path}: tokenizer has {tok.vocab_size} tokens but the model embeds only "
                            f"{vocab_size}; tokenizer and weights do not belong together")
    return tok


def as_tokenizer(src):
    """A Tokenizer from a Tokenizer, a path (.gguf file, tokenizer file or directory), or None."""
    if src is None or not isinstance(src, (str, Path)):
        return src  # already a Tokenizer
    src = Path(src)
    if src.is_file() and src.suffix == ".gguf":
        from .gguf import _reader
        if "tokenizer.ggml.tokens" not in _reader(src).fields:
            return None
    elif src.is_dir() and tokenizer_source("hf", src) is None:
        return None
    from ..tokenizer import load_tokenizer
    return load_tokenizer(src)


def load_state(path_or_id, *, lazy: bool = False, quantized: bool = False
               ) -> tuple[dict[str, torch.Tensor], ModelArgs, dict, str, Path]:
    """Tensors in our names + config, without building a model: (state, args, extra, format, path).
    lazy: tensors on the meta device (shapes and dtypes only), for inspecting a checkpoint cheaply.
    quantized: quantized matrices stay quantized (`llamalab.quant.GroupCodes`) where the format has them."""
    fmt, path = detect_format(resolve(path_or_id))
    options = {"quantized": True} if quantized and fmt == "gguf" else {}
    state, args, extra = _format_module(fmt).load_state(path, lazy=lazy, **options)
    check_state(state, args, path)
    return state, args, extra, fmt, path


def load(path_or_id, *, device="cpu", dtype=torch.float32, tokenizer: bool = True) -> Checkpoint:
    """Load a .gguf file, an HF directory, a Meta directory, or a hub id into our Transformer.

    dtype None: quantized weights stay quantized and run as such (`llamalab.quant`), the rest is float32;
    a dtype dequantizes everything to it."""
    state, args, extra, fmt, path = load_state(path_or_id, quantized=dtype is None)
    from ..quant import GroupCodes, build_quantized
    if any(isinstance(v, GroupCodes) for v in state.values()):
        model = build_quantized(state, args, device=device)
    else:
        model = build_model(state, args, device=device, dtype=dtype or torch.float32)
    tok = load_tokenizer_for(fmt, path, args.vocab_size, extra) if tokenizer else None
    return Checkpoint(model=model, args=args, tokenizer=tok, format=fmt,
                      metadata=extra.get("metadata", {}), path=path)


def save(state: dict[str, torch.Tensor], args: ModelArgs, out, fmt: str, tokenizer_src=None, **options) -> Path:
    """Write our state dict as `fmt` ("hf" | "meta" | "gguf") to `out` (a directory; a file for gguf).

    tokenizer_src: the source checkpoint's tokenizer (a Tokenizer, a .gguf file or a directory with
    tokenizer files), so the export carries it.
    """
    if fmt not in FORMATS:
        raise LlamalabError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _format_module(fmt).save(state, args, out, tokenizer_src=tokenizer_src, **options)
