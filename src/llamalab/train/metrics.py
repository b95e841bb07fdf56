"""What a run reports: a metrics JSONL, a loss-curve PNG, and MFU (the progress bar is the loop's)."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch

from ..atomic import staged_file, write_text
from ..bounded import loads
from ..config import ModelArgs
from ..plan.flops import training_flops_per_token
from ..plan.gpus import gpu_for_device


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[float | None, str]:
    """(peak FLOP/s, description) that MFU divides by. A GPU: the dense bf16 datasheet peak of the planner's
    table (`llamalab.plan.gpus`); an unknown GPU gets no MFU. A CPU has no datasheet figure worth the name, so
    its peak is measured once per process: the best of a few large matmuls in the training dtype."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        gpu = gpu_for_device(name)
        if gpu is None:
            return None, f"{name} (peak unknown: no MFU)"
        return gpu.bf16_flops, f"{name} = {gpu.name}, {gpu.bf16_flops / 1e12:g} TFLOP/s bf16 dense peak"
    if device.type != "cpu":
        return None, f"{device.type} (peak unknown: no MFU)"
    dtype = dtype if dtype == torch.bfloat16 else torch.float32
    flops = measured_cpu_matmul_flops(dtype, torch.get_num_threads())
    return flops, (f"CPU, {torch.get_num_threads()} threads: {flops / 1e9:,.0f} GFLOP/s, the best "
                   f"{_BENCH_SIZE}x{_BENCH_SIZE} {str(dtype).removeprefix('torch.')} matmul measured at start")


_BENCH_SIZE = 1024


@functools.lru_cache(maxsize=None)
def measured_cpu_matmul_flops(dtype: torch.dtype, threads: int, repeats: int = 8) -> float:
    """FLOP/s of the fastest of `repeats` (n×n)·(n×n) matmuls (2·n³ FLOPs each) on this CPU: about the best
    rate the model's own matmuls can reach here, so MFU reads as the share of it the training step achieves
    (a busy machine measured at start can push it past 100%). ~0.1-1 s, once per process."""
    del threads  # part of the cache key: the rate depends on it
    n = _BENCH_SIZE
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, packing buffers
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def mfu(args: ModelArgs, seq_len: int, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilization (Chowdhery et al. 2022): the model's FLOP/s — tokens/s times the planner's
    `training_flops_per_token` (6·N + 12·L·H·Q·T, N without the input embedding) — over the device's peak."""
    return None if not peak else training_flops_per_token(args, seq_len) * tokens_per_s / peak


class MetricsLog:
    """Append-only JSONL, one record per line; `truncate_after(step)` drops records a killed run wrote past
    the checkpoint it resumes from, so the file always describes one consistent run."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and _complete(line) and loads(line).get("step", 0) <= step]
        write_text(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [loads(line) for line in self.path.read_text().splitlines() if line.strip() and _complete(line)]


def _complete(line: str) -> bool:
    try:
        loads(line)
        return True
    except json.JSONDecodeError:  # the last line of a killed run may be cut short
        return False


def plot_loss(records: list[dict], out: Path, title: str = "") -> None:
    """Training loss per step (and held-out loss where evaluated), written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), lw=1, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", lw=1.5, label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with staged_file(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
