"""`llamalab imatrix`: the importance matrix of a model on calibration text, as llama.cpp's `llama-imatrix`
computes it, for `quantize --type ... --imatrix FILE`.

For every weight matrix of the decoder layers (`blk.*`: attn_q/k/v/output, ffn_gate/up/down; not the
embedding or the output head, as llama-imatrix leaves them without `--process-output`), the sum over
the calibration tokens of each input column's squared activation, and the number of tokens: their ratio is
the mean square of the inputs that column multiplies, which the quantizer weighs each weight's rounding error
by (`quant.kquant_imatrix`). The text is tokenized once (BOS first when the model adds one) and cut into
chunks of `ctx` tokens, each starting with BOS as llama-imatrix's do, each run through the model as one
sequence. Written in llama.cpp's GGUF imatrix format (`formats.imatrix`).

`imatrix_for` matches a file's entries to a model's tensors as llama.cpp's quantizer does: by GGUF name, a
tensor without an entry quantized without one, an entry of the wrong length an error (the embedding's
excepted, which llama.cpp ignores); a file that matches none of the model's tensors is refused here (llama.cpp
would quantize without it, silently).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from .atomic import check_apart
from .calibrate import CORPUS, calibration_text
from .errors import LlamalabError
from .formats.imatrix import Imatrix, read_imatrix, write_imatrix
from .formats.names import name_maps
from .runtime import load_runnable

MIN_TOKENS = 16  # llama-imatrix skips matrix products of fewer rows
CORPUS_CHUNKS = 64  # chunks taken from the embedded corpus when --chunks is not given
PROJECTIONS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1",
               "feed_forward.w2", "feed_forward.w3")


class _Sums:
    """Per projection: the float64 sum of squared inputs per column and the tokens seen (forward pre-hooks)."""

    def __init__(self, model):
        _, to_gguf = name_maps("gguf")
        self.sums, self.counts, self.handles = {}, {}, []
        for i, layer in enumerate(model.layers):
            for proj in PROJECTIONS:
                name = to_gguf(f"layers.{i}.{proj}.weight")
                self.handles.append(layer.get_submodule(proj).register_forward_pre_hook(self._hook(name)))

    def _hook(self, name):
        def add(module, args):
            x = args[0].reshape(-1, args[0].shape[-1])
            if x.shape[0] < MIN_TOKENS:
                return
            s = x.double().square().sum(0)
            self.sums[name] = self.sums[name] + s if name in self.sums else s
            self.counts[name] = self.counts.get(name, 0) + x.shape[0]
        return add

    def close(self):
        for h in self.handles:
            h.remove()


def chunks_of(tokens: list[int], ctx: int, chunks: int | None, bos: int | None, where: str) -> torch.Tensor:
    """(n, ctx) chunks of the token stream, the first token of each BOS (when the model adds one)."""
    n = len(tokens) // ctx
    if n < 1:
        raise LlamalabError(f"{where}: the calibration text is {len(tokens)} tokens, shorter than one chunk of "
                            f"--ctx {ctx}; give a longer text or a smaller --ctx")
    data = torch.tensor(tokens[:min(n, chunks or n) * ctx]).view(-1, ctx)
    if bos is not None:
        data[:, 0] = bos
    return data


@torch.no_grad()
def collect(model, chunks: torch.Tensor, *, progress: bool = True) -> dict[str, tuple]:
    """{GGUF tensor name: (sums of squared inputs (1, columns) float32, counts (1,))} over the chunks."""
    sums = _Sums(model)
    device = next(model.parameters()).device
    try:
        for row in tqdm(chunks, desc="imatrix", unit="chunk", disable=not progress, dynamic_ncols=True):
            model.hidden_states(row[None].to(device))
    finally:
        sums.close()
    return {k: (v.float().cpu().numpy()[None], [sums.counts[k]]) for k, v in sums.sums.items()}


def compute_imatrix(model_src, out, *, calibration=CORPUS, chunks: int | None = None, ctx: int = 512,
                    device=None, force: bool = False, progress: bool = True) -> Path:
    """Compute the importance matrix of `model_src` on the calibration text and write it to `out` (GGUF)."""
    out = Path(out)
    if ctx < MIN_TOKENS:
        raise LlamalabError(f"--ctx must be at least {MIN_TOKENS} (llama-imatrix skips shorter batches), got {ctx}")
    if out.exists() and not force:
        raise LlamalabError(f"{out} already exists; pass --force to replace it")
    rt = load_runnable(model_src, device=device, dtype=torch.float32)
    check_apart(out, [p for p in (rt.path,) if p is not None])
    if ctx > rt.args.max_seq_len:
        raise LlamalabError(f"--ctx {ctx} is longer than the model's context of {rt.args.max_seq_len}")
    if chunks is None and str(calibration) == CORPUS:
        chunks = CORPUS_CHUNKS
    text = calibration_text(calibration, chars=(chunks or 1) * ctx * 8)
    tok = rt.tokenizer
    bos = tok.bos_id if tok.add_bos else None
    data = chunks_of(tok.encode(text, bos=tok.add_bos), ctx, chunks, bos, f"--calibration {calibration}")
    sums = collect(rt.model, data, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_imatrix(out, sums, datasets=[str(calibration)], chunk_count=len(data), chunk_size=ctx)


def imatrix_for(path, shapes: dict[str, tuple]) -> dict:
    """The importance values of `path` for the tensors `shapes` ({GGUF name: (rows, columns)} of the matrices
    to quantize), matched as llama.cpp's quantizer matches them."""
    imx: Imatrix = read_imatrix(path)
    found = {}
    for name, shape in shapes.items():
        v = imx.values.get(name)
        if v is None or len(shape) < 2:
            continue
        if v.size != shape[-1]:
            if name == "token_embd.weight":  # llama.cpp ignores a mismatch for the embedding alone
                continue
            raise LlamalabError(f"--imatrix {path}: {name} has {v.size:,} importance values for {shape[-1]:,} "
                                "columns; the importance matrix was computed for another model")
        found[name] = v
    if not found:
        have = ", ".join(sorted(imx.values)[:3]) or "none"
        raise LlamalabError(f"--imatrix {path}: none of its {len(imx.values)} entries ({have}, ...) names a tensor "
                            "of this model; it was computed for another model (recompute it with `llamalab imatrix`)")
    return found
