"""What a run reports: a metrics JSONL, a loss-curve PNG, and MFU (the progress bar is the loop's)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import staged_file, write_text

# Dense peak FLOP/s per device (bf16 tensor cores on GPUs). Unknown GPUs get no MFU.
_GPU_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12,
             "V100": 125e12, "4090": 165e12, "3090": 71e12}


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak FLOP/s, description). On CPU the figure is only indicative: threads × 2.5 GHz × 32 fp32
    FLOP/cycle (two AVX2 FMA units)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in _GPU_PEAK.items():
            if key in name:
                return flops, f"{name} bf16 dense peak"
        return None, f"{name} (peak unknown)"
    threads = torch.get_num_threads()
    return threads * 2.5e9 * 32, f"CPU, {threads} threads × 2.5 GHz × 32 FLOP/cycle (indicative)"


def mfu(n_params: int, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilization: 6·N·(tokens/s) over the device's peak (Chowdhery et al. 2022)."""
    return None if not peak else 6 * n_params * tokens_per_s / peak


class MetricsLog:
    """Append-only JSONL, one record per line; `truncate_after(step)` drops records a killed run wrote past
    the checkpoint it resumes from, so the file always describes one consistent run."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and _complete(line) and json.loads(line).get("step", 0) <= step]
        write_text(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip() and _complete(line)]


def _complete(line: str) -> bool:
    try:
        json.loads(line)
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
