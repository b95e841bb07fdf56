"""GPTQ over a whole Transformer, as the paper runs it on LLaMA-family models: decoder layers one at a time,
in order, each fed the calibration activations that the already-quantized layers before it produce
(`gptq_codes`). Within a layer, "true sequential": the projections in the order the data meets them —
wq/wk/wv (one Hessian: they share their input), then wo on the attention output of the quantized wq/wk/wv,
then w1/w3 (shared input) on the residual stream after the quantized wo, then w2. Each quantized weight
replaces its float one (dequantized) before the next part runs.

Memory: one decoder layer's activations for all samples at a time (its input, attention output and
SwiGLU hidden state: samples × seq_len × (2·dim + ffn_dim) floats) plus one Hessian per input width.
The token embedding and the output head stay float (as GPTQ checkpoints keep them).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..model import Transformer, TransformerBlock
from .codes import GroupCodes
from .gptq import Hessian, gptq, round_to_nearest

# the projections of a decoder layer in the order the data meets them; a group shares one input
SEQUENCE = (("attention.wq", "attention.wk", "attention.wv"), ("attention.wo",),
            ("feed_forward.w1", "feed_forward.w3"), ("feed_forward.w2",))


class _Captured(Exception):
    """Raised by the pre-hook once a projection's input is caught: the rest of the forward is not needed."""

    def __init__(self, x):
        self.x = x


def _input_of(linear: torch.nn.Module, run):
    """The input `linear` receives while `run()` executes (stopped at that point)."""
    def hook(module, args):
        raise _Captured(args[0])

    handle = linear.register_forward_pre_hook(hook)
    try:
        run()
    except _Captured as c:
        return c.x
    finally:
        handle.remove()
    raise RuntimeError(f"{linear} was not called")


class _Quantizer:
    def __init__(self, method: str, **options):
        self.method, self.options = method, options

    def __call__(self, layer: TransformerBlock, names, hessian: Hessian | None, prefix: str, out: dict) -> None:
        for name in names:
            linear = layer.get_submodule(name)
            w = linear.weight
            if self.method == "gptq":
                codes = gptq(w, hessian.H, **self.options)
            else:
                codes = round_to_nearest(w, **{k: v for k, v in self.options.items() if k in ("bits", "group_size",
                                                                                              "sym", "mse")})
            linear.weight.data = codes.dequantize().to(w.dtype)
            out[f"{prefix}.{name}.weight"] = codes


def _batches(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _layer(layer: TransformerBlock, x: torch.Tensor, rotation, quantize: _Quantizer, prefix: str,
           out: dict, batch: int, skip: int = 0) -> torch.Tensor:
    """Quantize one decoder layer's projections in order; returns its output for the next layer."""
    parts = _batches(len(x), batch)
    attention, ffn = layer.attention, layer.feed_forward
    h = Hessian(x.shape[-1])
    for s in parts:
        h.add((layer.attention_norm(x[s]))[:, skip:])
    quantize(layer, SEQUENCE[0], h, prefix, out)
    core = torch.cat([_input_of(attention.wo, lambda s=s: attention(layer.attention_norm(x[s]), rotation))
                      for s in parts])
    h = Hessian(core.shape[-1])
    for s in parts:
        h.add((core[s])[:, skip:])
    quantize(layer, SEQUENCE[1], h, prefix, out)
    x = torch.cat([x[s] + attention.wo(core[s]) for s in parts])  # the residual stream after attention
    del core
    h = Hessian(x.shape[-1])
    for s in parts:
        h.add((layer.ffn_norm(x[s]))[:, skip:])
    quantize(layer, SEQUENCE[2], h, prefix, out)
    hidden = torch.cat([_input_of(ffn.w2, lambda s=s: ffn(layer.ffn_norm(x[s]))) for s in parts])
    h = Hessian(hidden.shape[-1])
    for s in parts:
        h.add((hidden[s])[:, skip:])
    quantize(layer, SEQUENCE[3], h, prefix, out)
    return torch.cat([x[s] + ffn.w2(hidden[s]) for s in parts])


@torch.no_grad()
def gptq_codes(model: Transformer, samples: torch.Tensor, *, bits: int = 4, group_size: int = 128,
               sym: bool = False, act_order: bool = False, method: str = "gptq", batch: int = 8,
               progress: bool = True, skip: int = 0, **options) -> dict[str, GroupCodes]:
    """{`layers.i.<projection>.weight`: codes} for every decoder-layer projection of the float model, from
    the calibration token windows `samples` (N, L). The model's projections are left dequantized (its
    weights change). method "rtn": the same grid, rounded to nearest (no calibration needed)."""
    quantize = _Quantizer(method, bits=bits, group_size=group_size, sym=sym, act_order=act_order, **options)
    out: dict[str, GroupCodes] = {}
    if method == "rtn":
        for i, layer in enumerate(model.layers):
            quantize(layer, [n for names in SEQUENCE for n in names], None, f"layers.{i}", out)
        return out
    L = samples.shape[1]
    model.ensure_positions(L)
    rotation = torch.view_as_real(model.freqs_cis)[:L][None, :, None]
    x = torch.cat([model.tok_embeddings(samples[s]) for s in _batches(len(samples), batch)]).float()
    for i, layer in enumerate(tqdm(model.layers, desc=f"{method.upper()} layers", unit="layer",
                                   disable=not progress, dynamic_ncols=True)):
        x = _layer(layer, x, rotation, quantize, f"layers.{i}", out, batch, skip)
    return out
