"""`llamalab quantize --method gptq`: calibration text → token windows → GPTQ codes → a GPTQ checkpoint.

Calibration text is a UTF-8 file, or `corpus`: the embedded demo corpus' prose (State of the Union
addresses, Moby-Dick) from its second document on — its first document is held out, the text the
quality measurements (bench/quant_quality.py, README) compute perplexity on. The samples are windows of
`seq_len` tokens at random offsets (seeded), as the GPTQ paper draws its C4 samples.

The output is an HF directory in the GPTQ layout (`gptq_layout`: qweight/qzeros/scales/g_idx,
quantize_config.json), the non-quantized tensors (embedding, norms) in float16 as GPTQ checkpoints keep them;
or, for a `.gguf` path, GGUF blocks holding GPTQ's values where the grid fits one (group 32 in column order:
Q4_1, Q4_0 when symmetric, Q8_0 at 8 bits symmetric), the embedding at Q8_0 as llama.cpp's quantizer keeps it.
"""

from __future__ import annotations

import json
import lzma
from importlib import resources
from pathlib import Path

import torch

from .errors import LlamalabError
from .formats import load_state, load_tokenizer_for, model_from_state, save
from .formats.output import check_output
from .quant.gptq import DAMP, check
from .quant.gptq_layout import quantize_config
from .quant.gptq_model import gptq_codes

FLOAT_TYPES = {"F32", "F16", "BF16"}

CORPUS = "corpus"


def calibration_text(source, chars: int) -> str:
    """About `chars` characters of calibration text from a file, or from the demo corpus (`corpus`)."""
    if str(source) != CORPUS:
        try:
            return Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise LlamalabError(f"--calibration {source}: cannot read it as UTF-8 text ({e}); give a text file "
                                f"or '{CORPUS}'") from None
    parts, total = [], 0
    with lzma.open(resources.files("llamalab.data.corpus") / "prose.jsonl.xz", "rt", encoding="utf-8") as f:
        next(f)  # the first document is the held-out text
        for line in f:
            parts.append(json.loads(line)["text"])
            total += len(parts[-1])
            if total >= chars:
                break
    return "\n\n".join(parts)


def calibration_samples(tokens: list[int], samples: int, seq_len: int, *, seed: int = 0, where="") -> torch.Tensor:
    """(samples, seq_len) token windows at random offsets of `tokens`."""
    if samples < 1 or seq_len < 2:
        raise LlamalabError(f"--samples must be >= 1 and --seq-len >= 2, got {samples} and {seq_len}")
    if len(tokens) < seq_len:
        raise LlamalabError(f"{where}: the calibration text is {len(tokens)} tokens, shorter than one sample of "
                            f"--seq-len {seq_len}; give a longer text or a smaller --seq-len")
    data = torch.tensor(tokens)
    starts = torch.randint(0, len(tokens) - seq_len + 1, (samples,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([data[s:s + seq_len] for s in starts.tolist()])


def float_source(src):
    """(state, args, format, path) of a float checkpoint; a quantized one is one error line (quantize floats)."""
    src = load_state(src)
    meta = src.extra.get("metadata", {})
    quantized = sorted({t for t in src.extra.get("tensor_types", {}).values() if t not in FLOAT_TYPES})
    if quantized or "quantization_config" in meta:
        what = ", ".join(quantized) or meta["quantization_config"].get("quant_method", "quantized")
        raise LlamalabError(f"{src.path} is already quantized ({what}); quantize a float checkpoint "
                            f"(e.g. `llamalab convert {src.path} --to gguf --out model-f32.gguf` first)")
    return src.state, src.args, src.format, src.path


def _check(bits: int, group_size: int, state: dict) -> None:
    for name, w in state.items():
        if name.startswith("layers.") and w.ndim == 2:
            check(w, bits, group_size, f"{name}, a")  # bits, group size, and widths GPTQ's packing can hold


def gptq_checkpoint(src, out, *, bits: int = 4, group_size: int = 128, sym: bool = False, act_order: bool = False,
                    calibration=CORPUS, samples: int = 128, seq_len: int = 512, method: str = "gptq",
                    damp: float = DAMP, mse: bool = False, force: bool = False, progress: bool = True) -> Path:
    """Quantize the float checkpoint `src` with GPTQ and write the GPTQ-layout directory `out` (atomically).
    method "rtn": the same grid and layout, rounded to nearest (the baseline; no calibration). damp: the
    dampening λ as a fraction of H's mean diagonal (the paper's 1%); mse: each group's range shrunk to the
    least rounding error (GPTQ's `Quantizer(mse=True)`) instead of min/max."""
    out = Path(out)
    gguf = out.suffix == ".gguf"
    if gguf and (group_size != 32 or act_order or bits == 3 or (bits == 8 and not sym)):
        raise LlamalabError("GGUF output holds GPTQ's values only as Q4_0 / Q4_1 / Q8_0 blocks: --bits 4 (or 8 with "
                            "--sym) --group-size 32 without --act-order; write a directory for the rest")
    state, args, fmt, path = float_source(src)
    _check(bits, group_size, state)
    check_output(out, "gguf" if gguf else "hf", force=force, inputs=[path])
    if seq_len > args.max_seq_len:
        raise LlamalabError(f"--seq-len {seq_len} is longer than the model's context of {args.max_seq_len}")
    tokens = None
    if method == "gptq":
        tokenizer = load_tokenizer_for(fmt, path, args.vocab_size)
        if tokenizer is None:
            raise LlamalabError(f"{path}: no tokenizer found to encode the calibration text")
        text = calibration_text(calibration, chars=samples * seq_len * 8)
        tokens = calibration_samples(tokenizer.encode(text), samples, seq_len, where=f"--calibration {calibration}")
    model = model_from_state(state, args)
    codes = gptq_codes(model, tokens, bits=bits, group_size=group_size, sym=sym, act_order=act_order,
                       method=method, progress=progress, damp=damp, mse=mse)
    if gguf:  # GPTQ's values as GGUF blocks (llama.cpp runs them); the embedding Q8_0 as llama.cpp keeps it
        kind = "q8_0" if bits == 8 else "q4_0" if sym else "q4_1"
        return save({**state, **codes}, args, out, "gguf", tokenizer_src=path, gguf_type=kind, force=force)
    config = quantize_config(bits, group_size, sym, act_order, damp)
    return save({**state, **codes}, args, out, "hf", tokenizer_src=path, dtype=torch.float16, force=force,
                quantization_config=config)
