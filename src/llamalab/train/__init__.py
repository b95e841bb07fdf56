"""Pretraining: config, AdamW + cosine schedule, the loop, DDP/FSDP2, atomic checkpoints, metrics."""

from __future__ import annotations

from pathlib import Path

from .run_config import TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name_or_path: str) -> Path:
    """A path, or the name of a bundled config (`demo`, `llama-7b`)."""
    path = Path(name_or_path)
    if not path.is_file() and (CONFIGS / f"{name_or_path}.yaml").exists():
        return CONFIGS / f"{name_or_path}.yaml"
    return path


def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    from .loop import train as _train

    return _train(cfg, resume=resume)


__all__ = ["TrainConfig", "load_config", "resolve_config_path", "train"]
