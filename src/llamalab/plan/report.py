"""A Plan as the terminal shows it."""

from __future__ import annotations

from .budget import Plan
from .gpus import get_gpu

GiB = 2**30


def _count(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:,.3g}{unit}"
    return f"{x:,.0f}"


def _duration(days: float) -> str:
    if days * 24 < 1:
        return f"{days * 24 * 60:,.3g} minutes"
    return f"{days * 24:,.1f} hours" if days < 2 else f"{days:,.1f} days"


def _energy(mwh: float) -> str:
    return f"{mwh:,.2f} MWh" if mwh >= 1 else f"{mwh * 1000:,.3g} kWh"


def _carbon(t: float) -> str:
    return f"{t:,.2f} tCO2eq" if t >= 1 else f"{t * 1000:,.3g} kg CO2eq"


def format_plan(plan: Plan) -> str:
    gpu = get_gpu(plan.gpu)
    inf, setup = plan.inference, plan.setup
    lines = [f"{plan.model}: {plan.params:,d} parameters ({plan.matmul_params:,d} in weight matrices but the "
             f"input-embedding lookup: N of the FLOP count)"]
    lines += [f"  note: {n}" for n in plan.notes]
    attention = plan.flops_per_token - 6 * plan.matmul_params
    lines += [
        f"training: {_count(plan.tokens)} tokens ({plan.tokens_source}) in sequences of {plan.seq_len}",
        f"  FLOPs/token    6·N + 12·L·H·Q·T = {6 * plan.matmul_params / 1e9:,.4g} + {attention / 1e9:,.4g} = "
        f"{plan.flops_per_token / 1e9:,.4g} GFLOP  (PaLM, appendix B)",
        f"  total          {plan.flops:.3e} FLOPs",
        f"  tokens/param   {plan.tokens_per_param:,.1f}  (Chinchilla-optimal ≈ 20: {_count(plan.chinchilla_tokens)} "
        f"tokens for this size)",
        f"on {plan.gpus:,d} × {gpu.name} ({gpu.bf16_flops / 1e12:,.0f} TFLOP/s bf16 dense, {gpu.power_w:.0f} W) "
        f"at MFU {plan.mfu:.1%}:",
        f"  throughput     {plan.tokens_per_gpu_s:,.0f} tokens/s per GPU, {plan.tokens_per_gpu_s * plan.gpus:,.0f} in all",
        f"  GPU-hours      {plan.gpu_hours:,.0f}" if plan.gpu_hours >= 100 else f"  GPU-hours      {plan.gpu_hours:.3g}",
        f"  wall-clock     {_duration(plan.days)}",
        f"  energy         {_energy(plan.mwh)}  (GPU-hours × {gpu.power_w:.0f} W × PUE)",
        f"  carbon         {_carbon(plan.tco2eq)}",
        f"inference at {inf.context} tokens of context: 2·N + 4·L·H·Q·c = {inf.flops_per_token / 1e9:,.4g} GFLOP per token",
        f"  per 1M generated tokens: {inf.gpu_hours_per_m_compute:,.3g} GPU-hours batched at MFU {plan.mfu:.0%} "
        f"({inf.kwh_per_m_compute:,.3g} kWh);",
        f"  {inf.gpu_hours_per_m_batch1:,.3g} GPU-hours one sequence at a time (all bf16 weights read per token at "
        f"{gpu.bandwidth_gbs:,.0f} GB/s)",
    ]
    if plan.memory is not None:
        lines += format_memory(plan.memory, setup, plan.seq_len, gpu.name, plan.gpus)
    return "\n".join(lines)


def format_memory(mem, setup: dict, seq_len: int, gpu: str, gpus: int) -> list[str]:
    ac = setup["activation_checkpointing"]
    rows = [("weights (fp32)", mem.weights, mem.weights), ("gradients (fp32)", mem.gradients, mem.gradients),
            ("AdamW state (fp32)", mem.optimizer, mem.optimizer), ("buffers", mem.buffers, mem.buffers_ac),
            ("activations", mem.activations, mem.activations_ac), ("total", mem.total, mem.total_ac)]
    fits = {True: "fits", False: "does not fit", None: "?"}
    tp = setup.get("tensor_parallel", 1)
    layout = (f"{setup['parallel']} over {gpus:,d} GPUs" if tp == 1 else
              f"tensor parallel {tp} (+ sequence parallel) × {setup['parallel']} over {gpus // tp:,d} groups")
    lines = [f"memory per GPU: {layout}, {setup['dtype']}, micro-batch "
             f"{setup['micro_batch']} × {seq_len} tokens",
             f"  {'':20s} {'no checkpointing':>17s} {'checkpointing':>14s}"]
    lines += [f"  {name:20s} {a / GiB:14,.2f} GiB {b / GiB:10,.2f} GiB" for name, a, b in rows]
    lines.append(f"  on {gpu} ({mem.capacity / GiB:,.0f} GiB; 90% usable): {fits[mem.fits(False)]} without, "
                 f"{fits[mem.fits(True)]} with activation checkpointing → the plan "
                 f"{'uses activation checkpointing' if ac else 'needs no activation checkpointing'}")
    return lines
