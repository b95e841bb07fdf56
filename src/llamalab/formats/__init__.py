"""Checkpoint formats and the one loader: `llamalab.load(path)`.

Each format module (`meta`, `hf`, `gguf`) has `load_state(path) -> (state_dict, ModelArgs, extra)` in
our parameter names and layout, and `save(state_dict, args, out, ...)`. `load` sniffs the format,
checks every tensor against the config, and materializes the model straight from the tensors
(built on the meta device: no memory spent on a throwaway random init).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from huggingface_hub import snapshot_download

from .. import library
from ..config import ModelArgs
from ..errors import LlamalabError
from ..images import Preprocess
from ..model import Transformer
from ..quant import GGMLBlocks, GroupCodes, build_quantized
from ..quant import float_linear
from ..tokenizer import Tokenizer, check_vocab, find_tokenizer, tokenizer_from_gguf_fields
from . import adaption_prompt, gguf, hf, llava, llava_pair, meta
from . import mmproj as mmproj_file
from .output import check_output
from .peft import attach_adapter
from .shapes import check_layers, check_state, expected_shapes  # noqa: F401  (formats.expected_shapes)

MODULES = {"gguf": gguf, "hf": hf, "meta": meta}
FORMATS = tuple(MODULES)


@dataclass
class Checkpoint:
    model: Transformer
    args: ModelArgs
    tokenizer: Tokenizer | None
    format: str  # "gguf" | "hf" | "meta"
    metadata: dict = field(default_factory=dict)
    path: Path | None = None
    vision: "llava.Llava | None" = None  # a LLaVA checkpoint: the whole model (`model` is its language model)
    preprocess: "Preprocess | None" = None  # its images' preprocessing, where the checkpoint says (an mmproj file)


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
    """A local path; else a model of the library (`llamalab models import`) by its name (`smol`, `smol:q4`);
    else a hub id ("org/name") downloaded with huggingface_hub. Only a bare "org/name" may be a hub id; a
    name with a checkpoint suffix or `./`, `/`, `~` is a path."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    if library.looks_like_name(path_or_id):
        if library.full_name(path_or_id) not in library.names():
            have = ", ".join(library.names()) or "none"
            raise LlamalabError(f"{path_or_id}: no such file or directory, and no model of that name in the library "
                                f"{library.home()} (it has: {have}); check the path, or `llamalab models list`")
        return Path(library.resolve(path_or_id))
    if isinstance(path_or_id, str) and re.fullmatch(r"[\w-][\w.-]*/[\w.-]*[\w-]", path_or_id) and \
            path.suffix not in (".gguf", ".safetensors", ".json", ".pth", ".model"):
        print(f"{path_or_id}: no such local path; fetching it from the Hugging Face Hub", file=sys.stderr)
        try:
            return Path(snapshot_download(path_or_id, allow_patterns=[
                "*.json", "*.safetensors", "tokenizer.model", "*.gguf"]))
        except Exception as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise LlamalabError(f"{path_or_id}: no such local path, and fetching it as a hub repository failed "
                                f"({reason[:200]}); check the path, or the repository name and your network "
                                "(a gated model needs `hf auth login`)") from None
    raise LlamalabError(f"{path}: no such file or directory; check the path (a hub id looks like org/name)")


def model_from_state(state: dict[str, torch.Tensor], args: ModelArgs, *, device="cpu",
                     dtype=torch.float32, keep_16bit: bool = False) -> Transformer:
    """The Transformer whose parameters are these tensors (cast to dtype, moved to device); keep_16bit: float16
    and bfloat16 matrices keep their dtype (for `quant.float_linear.route`, which runs them as they are)."""
    def cast(v: torch.Tensor) -> torch.Tensor:
        keep = keep_16bit and v.dim() == 2 and v.dtype in float_linear.HALF
        return v.to(device=device, dtype=v.dtype if keep else dtype)

    with torch.device("meta"):
        model = Transformer(args)
    model.load_state_dict({k: cast(v) for k, v in state.items()}, strict=not args.tie_embeddings, assign=True)
    model.tie_weights()
    model.init_buffers(device)
    return model.eval()


def load_tokenizer_for(fmt: str, path: Path, vocab_size: int, extra: dict | None = None) -> Tokenizer | None:
    """The checkpoint's tokenizer, or None when it ships none; it must fit the model's `vocab_size`.
    `extra` from `load_state` saves re-reading a GGUF file (its tokenizer.* fields are already there)."""
    fields = (extra or {}).get("tokenizer_fields")
    if fields is not None:
        tok = tokenizer_from_gguf_fields(fields, source=str(path)) if "tokenizer.ggml.tokens" in fields else None
    else:
        tok = find_tokenizer(path)
    if tok is not None:
        check_vocab(tok.vocab_size, vocab_size, what=f"{path}: the tokenizer",
                    fix="tokenizer and weights do not belong together")
    return tok


class LoadedState(NamedTuple):
    """A checkpoint's tensors in our names and its config, without a model (`load_state`)."""
    state: dict[str, torch.Tensor]
    args: ModelArgs
    extra: dict        # the format's own: metadata, tensor types, a GGUF's tokenizer fields, ...
    format: str        # "gguf" | "hf" | "meta"
    path: Path         # the file or directory read

    def tokenizer(self) -> Tokenizer | None:
        """The checkpoint's tokenizer (checked against the vocabulary size), or None when it ships none."""
        return load_tokenizer_for(self.format, self.path, self.args.vocab_size, self.extra)


def load_state(path_or_id, *, lazy: bool = False, quantized: bool = False) -> LoadedState:
    """Tensors in our names + config, without building a model: `LoadedState(state, args, extra, format, path)`.
    lazy: tensors on the meta device (shapes and dtypes only), for inspecting a checkpoint cheaply.
    quantized: quantized matrices stay quantized (`llamalab.quant.GroupCodes`) where the format has them."""
    fmt, path = detect_format(resolve(path_or_id))
    if fmt == "hf" and llava.is_llava(path):
        raise LlamalabError(f"{path}: a LLaVA (vision) checkpoint: `llamalab generate --image`, `info` and "
                            "`convert` read it; this command does not handle one yet")
    options = {"quantized": True} if quantized and fmt in ("gguf", "hf") else {}
    state, args, extra = MODULES[fmt].load_state(path, lazy=lazy, **options)
    check_layers(state, args, path)
    check_state(state, args, path)
    return LoadedState(state, args, extra, fmt, path)


def load(path_or_id, *, device="cpu", dtype=torch.float32, tokenizer: bool = True,
         adapter=None, mmproj=None) -> Checkpoint:
    """Load a .gguf file, an HF directory, a Meta directory, or a hub id into our Transformer.

    dtype None: quantized weights stay quantized and run as such (`llamalab.quant`), the rest is float32
    except that on CPU float16 / bfloat16 matrices stay 16-bit, and every float projection runs through our
    matrix-vector kernel (`quant.float_linear`); a dtype dequantizes everything to it. adapter: a LoRA
    adapter directory (peft's layout) to run with the weights, unmerged (`llamalab lora merge` folds one in
    for good). A llava-hf directory loads whole (`Checkpoint.vision`), its language model as `model`; so does
    a text GGUF with llama.cpp's projector file beside it (`mmproj`: its CLIP tower and LLaVA projector)."""
    if llava.is_llava(path := resolve(path_or_id)):
        if mmproj:
            raise LlamalabError(f"{path}: a LLaVA checkpoint has its vision tower already; drop --mmproj")
        return _load_llava(path, device=device, dtype=dtype, tokenizer=tokenizer, adapter=adapter)
    src = load_state(path_or_id, quantized=dtype is None)
    if any(isinstance(v, (GroupCodes, GGMLBlocks)) for v in src.state.values()):
        model = build_quantized(src.state, src.args, device=device)
    else:
        fast = dtype is None and float_linear.enabled(device)
        model = model_from_state(src.state, src.args, device=device, dtype=dtype or torch.float32, keep_16bit=fast)
    if dtype is None:
        float_linear.route(model)
    ckpt = Checkpoint(model=model, args=src.args, tokenizer=src.tokenizer() if tokenizer else None, format=src.format,
                      metadata=src.extra.get("metadata", {}), path=src.path)
    if adapter and adaption_prompt.is_adaption_prompt(adapter):  # LLaMA-Adapter, peft's adaption_prompt
        adaption_prompt.attach(ckpt.model, adaption_prompt.load(adapter, ckpt.args))
    elif adapter:
        attach_adapter(ckpt, adapter)
    if mmproj:
        ckpt.vision, ckpt.preprocess = mmproj_file.attach(ckpt.model, ckpt.args, mmproj, device)
    return ckpt


def _load_llava(path: Path, *, device, dtype, tokenizer: bool, adapter) -> Checkpoint:
    if adapter:
        raise LlamalabError(f"{path}: --adapter is not supported with a LLaVA checkpoint yet")
    path = path if path.is_dir() else path.parent
    model = llava.load_model(path, dtype or torch.float32).to(device)
    model.language_model.init_buffers(device)
    tok = load_tokenizer_for("hf", path, model.args.text.vocab_size) if tokenizer else None
    return Checkpoint(model=model.language_model, args=model.args.text, tokenizer=tok, format="llava",
                      metadata=llava.hf._read_json(path / "config.json"), path=path, vision=model)


def save(state: dict[str, torch.Tensor], args: ModelArgs, out, fmt: str, tokenizer_src=None, *,
         force: bool = False, **options) -> Path:
    """Write our state dict as `fmt` ("hf" | "meta" | "gguf") to `out` (a directory; a file for gguf),
    atomically; `force` replaces an existing output (only a checkpoint, see `output.check_output`).

    tokenizer_src: the source checkpoint's tokenizer (a Tokenizer, a .gguf file or a directory with
    tokenizer files), so the export carries it. options: the format's own (`hf.save`, `meta.save`, `gguf.save`).
    """
    if fmt not in FORMATS:
        raise LlamalabError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return MODULES[fmt].save(state, args, out, tokenizer_src=tokenizer_src, force=force, **options)


def convert(src, out, to: str, *, dtype: torch.dtype | None = None, shards: int = 1, gguf_type: str | None = None,
            max_shard_size: int | str = 5 * 10**9, force: bool = False, mmproj=None, log=print) -> Path:
    """Convert the checkpoint `src` (a .gguf file, an HF or Meta directory, a hub id) to format `to` at `out`.

        formats.convert("SmolLM2-135M-Instruct.Q4_1.gguf", "smol-hf", "hf")

    dtype: of the written weights (default: the source's, float32 for quantized GGUF); shards: Meta
    model-parallel files; gguf_type: f32 | f16 | q8_0 (default f16 for a float16 dtype, else f32);
    max_shard_size: HF safetensors files. The tokenizer goes along: a directory's tokenizer files are
    copied, a GGUF vocabulary copied into GGUF verbatim. The output is written beside `out` and takes its
    place only when complete; `force` lets it replace an earlier output (never a directory holding other
    files, the input or the current directory). Returns the path written; `log` gets one summary line.
    A LLaVA (`llava_pair`): a llava-hf directory to gguf writes llama.cpp's pair, `out` and the projector
    file (`mmproj`, default `mmproj-<out's name>` beside it); a text GGUF with `mmproj` (its projector file) to
    hf writes a llava-hf directory.
    """
    if to not in FORMATS:
        raise LlamalabError(f"unknown format {to!r}; choose one of {', '.join(FORMATS)}")
    src = resolve(src)
    if mmproj or llava.is_llava(src):
        return llava_pair.convert(src, out, to, mmproj_file=mmproj, dtype=dtype, gguf_type=gguf_type,
                                  max_shard_size=max_shard_size, force=force, log=log)
    if shards < 1 or (shards > 1 and to != "meta"):
        raise LlamalabError("shards (--shards N, N >= 1) applies to the meta format only")
    fmt, path = detect_format(src)
    check_output(out, to, force=force, inputs=[path])
    src = load_state(path)
    state, args = src.state, src.args
    dtype = dtype or state["tok_embeddings.weight"].dtype
    options = {"hf": {"dtype": dtype, "max_shard_size": max_shard_size}, "meta": {"dtype": dtype, "shards": shards},
               "gguf": {"gguf_type": gguf_type or ("f16" if dtype == torch.float16 else "f32")}}[to]
    tokenizer_src = path  # a directory's tokenizer files are copied, a GGUF vocabulary copied into GGUF verbatim
    if fmt == "gguf" and to != "gguf":  # already read with the tensors
        tokenizer_src = src.tokenizer()
    written = save(state, args, out, to, tokenizer_src=tokenizer_src, force=force, **options)
    if log:
        log(f"wrote {written} ({to}, {sum(v.numel() for v in state.values()):,} params, from {fmt} {path})")
    return written
