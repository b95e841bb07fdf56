"""`llamalab plan`: from what the user knows (a preset, a parameter count or a training config) to a Plan.

The model is always a real `ModelArgs`, so parameters, FLOPs and memory come from the model definition:
`--params N` picks the LLaMA-shaped model closest to N (head width 128, dim = 128 × layers as in LLaMA-7B
and -13B, 32K vocabulary) and says which one it took.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import ModelArgs, check_tensor_parallel, get_preset
from ..errors import LlamalabError
from ..train import load_config, resolve_config_path
from .budget import CARBON_KG_PER_KWH, CHINCHILLA_TOKENS_PER_PARAM, PUE, Plan, make_plan
from .flops import count_params
from .gpus import get_gpu
from .memory import MemoryPlan, memory_plan
from .paper import TABLE_15

PAPER_TOKENS = {r.preset: r.tokens for r in TABLE_15 if r.preset}
MICRO_BATCHES = [2**i for i in range(11)]  # what the automatic choice tries: 1 … 1024 sequences
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str, what: str) -> float:
    """'1.4T', '300B', '2e9', '7b' → a number; anything else, or a negative one, is an error."""
    m = re.fullmatch(r"\s*([-+]?[0-9.]+(?:e[-+]?\d+)?)\s*([kmbgt]?)\s*", str(text).lower())
    try:
        value = float(m.group(1)) * _SUFFIX[m.group(2)] if m else None
    except ValueError:
        value = None
    if value is None:
        raise LlamalabError(f"cannot read {what} {text!r}: write a number such as 1.4e12, 1.4T, 300B or 7B")
    if value <= 0:
        raise LlamalabError(f"{what} must be positive, got {text}")
    return value


def llama_shaped(n_params: float) -> ModelArgs:
    """The LLaMA-shaped model (head_dim 128, dim = 128·layers, vocab 32000) whose count is closest to n: a
    bisection over the layer count (the count grows with it), each candidate counted from the model itself."""
    def shape(layers: int) -> ModelArgs:
        return ModelArgs(dim=128 * layers, n_layers=layers, n_heads=layers)

    lo, hi = 1, 160
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count_params(shape(mid)) < n_params else (lo, mid)
    candidates = [shape(layers) for layers in {max(1, lo - 1), lo}]
    return min(candidates, key=lambda a: abs(count_params(a) - n_params))


@dataclass
class Run:
    """What is planned: a model and how it would be trained (from a config file, or defaults)."""

    name: str
    args: ModelArgs
    seq_len: int
    tokens: float | None = None
    tokens_source: str = ""
    micro_batch: int | None = None
    parallel: str | None = None
    dtype: str | None = None
    steps: int | None = None  # a config's max_steps and batch_tokens: tokens = steps × batch
    batch_tokens: int | None = None
    tp: int | None = None  # a config's tensor_parallel
    note: str = ""


def resolve_run(model: str | None = None, params: str | None = None, config: str | None = None) -> Run:
    if sum(x is not None for x in (model, params, config)) != 1:
        raise LlamalabError("name exactly one of --model NAME, --params N or --config FILE (or use --paper)")
    if model is not None:
        args = get_preset(model)
        return Run(model, args, args.max_seq_len, PAPER_TOKENS.get(model),
                   "the paper's, Table 2" if model in PAPER_TOKENS else "")
    if params is not None:
        n = parse_count(params, "--params")
        args = llama_shaped(n)
        return Run(f"{count_params(args) / 1e9:.2f}B", args, args.max_seq_len,
                   note=f"--params {params}: the LLaMA-shaped model closest to it, dim {args.dim}, {args.n_layers} "
                        f"layers, {args.n_heads} heads, vocab {args.vocab_size} ({count_params(args):,d} parameters)")

    cfg = load_config(resolve_config_path(config))
    return Run(cfg.model if isinstance(cfg.model, str) else config, cfg.model_args(), cfg.seq_len,
               micro_batch=cfg.micro_batch_size, parallel=cfg.parallel if cfg.parallel != "none" else None,
               dtype="fp32" if cfg.dtype == "fp32" else "bf16", steps=cfg.max_steps, batch_tokens=cfg.batch_tokens,
               tp=cfg.tensor_parallel)


def choose_micro_batch(plan_memory, micro_batch: int | None) -> tuple[int, MemoryPlan, bool]:
    """(micro-batch, its memory plan, activation checkpointing?): the one asked for, or the largest power of
    two that fits without activation checkpointing, else with it. Nothing fits: one clear error."""
    if micro_batch is not None:
        if micro_batch < 1:
            raise LlamalabError(f"--micro-batch must be at least 1, got {micro_batch}")
        mem = plan_memory(micro_batch)
        if mem.fits(False) is not False:
            return micro_batch, mem, False
        if mem.fits(True):
            return micro_batch, mem, True
        raise LlamalabError(_does_not_fit(plan_memory, micro_batch, mem))
    for checkpointing in (False, True):
        fitting = [b for b in MICRO_BATCHES if plan_memory(b).fits(checkpointing)]
        if fitting:
            return fitting[-1], plan_memory(fitting[-1]), checkpointing
    raise LlamalabError(_does_not_fit(plan_memory, 1, plan_memory(1)))


def _does_not_fit(plan_memory, micro_batch: int, mem: MemoryPlan) -> str:
    gb = 2**30
    head = (f"micro-batch {micro_batch} does not fit: it needs {mem.total / gb:,.1f} GiB per GPU, "
            f"{mem.total_ac / gb:,.1f} GiB with activation checkpointing, of {mem.capacity / gb:,.0f} GiB")
    smaller = [b for b in MICRO_BATCHES if b < micro_batch and plan_memory(b).fits(True)]
    if smaller:
        return head + f"; the largest that fits is {smaller[-1]}: lower --micro-batch"
    enough = next((g for g in (2**i for i in range(1, 21)) if plan_memory(1, fsdp_gpus=g).fits(True)), None)
    return head + (f" (weights, gradients and AdamW alone: {mem.states / gb:,.1f} GiB); "
                   + (f"shard them with --parallel fsdp over --gpus {enough} or more" if enough else
                      "no GPU count makes it fit") + ", or choose a GPU with more memory")


def plan_training(*, model: str | None = None, params: str | None = None, config: str | None = None,
                  tokens: str | None = None, gpus: int = 8, gpu: str = "a100-80gb", mfu: float | None = None,
                  tokens_per_gpu_s: float | None = None, seq_len: int | None = None, micro_batch: int | None = None,
                  parallel: str | None = None, dtype: str | None = None, pue: float = PUE,
                  carbon: float = CARBON_KG_PER_KWH, tensor_parallel: int | None = None) -> Plan:
    """The plan of a training run; `plan.setup` records the micro-batch, activation checkpointing, parallelism
    and precision the memory plan assumed (chosen to fit when not given). tensor_parallel: GPUs per model
    copy (with sequence parallelism), the rest data parallel."""
    run = resolve_run(model, params, config)
    hw = get_gpu(gpu)
    seq_len = seq_len or run.seq_len
    parallel = parallel or run.parallel or "fsdp"
    dtype = dtype or run.dtype or "bf16"
    if parallel == "none" and gpus > 1:
        raise LlamalabError(f"--parallel none trains on one GPU, but --gpus is {gpus}: use ddp or fsdp")
    if seq_len < 1 or seq_len > run.args.max_seq_len:
        raise LlamalabError(f"--seq-len must be in 1..{run.args.max_seq_len} (the model's context), got {seq_len}")
    micro_batch = micro_batch if micro_batch is not None else run.micro_batch
    tp = tensor_parallel or run.tp or 1
    check_tensor_parallel(run.args, tp)
    if gpus % tp:
        raise LlamalabError(f"--tensor-parallel {tp} must divide --gpus {gpus}")

    def plan_memory(b: int, fsdp_gpus: int | None = None) -> MemoryPlan:
        return memory_plan(run.args, seq_len=seq_len, micro_batch=b, dtype=dtype, capacity=hw.memory_bytes,
                           parallel="fsdp" if fsdp_gpus else parallel, gpus=fsdp_gpus or gpus, tp=tp)

    b, mem, checkpointing = choose_micro_batch(plan_memory, micro_batch)
    if tokens is not None:
        n_tokens, source = parse_count(tokens, "--tokens"), "given"
    elif run.tokens:
        n_tokens, source = run.tokens, run.tokens_source
    elif run.steps:
        batch = run.batch_tokens or b * seq_len * gpus
        n_tokens, source = run.steps * batch, f"the config's: {run.steps:,d} steps × {batch:,d} tokens"
    else:
        n_tokens = CHINCHILLA_TOKENS_PER_PARAM * count_params(run.args)
        source = f"Chinchilla-optimal, {CHINCHILLA_TOKENS_PER_PARAM} per parameter (pass --tokens)"
    plan = make_plan(run.args, name=run.name, tokens=n_tokens, tokens_source=source, seq_len=seq_len, gpu=hw,
                     gpus=gpus, mfu=mfu, tokens_per_gpu_s=tokens_per_gpu_s, pue=pue, carbon=carbon, memory=mem)
    plan.setup = {"micro_batch": b, "activation_checkpointing": checkpointing, "parallel": parallel, "dtype": dtype,
                  "tensor_parallel": tp}
    if run.note:
        plan.notes.append(run.note)
    return plan
