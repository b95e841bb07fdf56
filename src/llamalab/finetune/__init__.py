"""Instruction tuning (Alpaca / Vicuna style): full fine-tuning, LoRA and QLoRA on the pretraining loop,
with adapters in peft's layout, merged into a checkpoint or attached at load time."""

from __future__ import annotations

from .config import FinetuneConfig


def finetune(cfg: FinetuneConfig, *, resume: bool = False) -> dict:
    from .run import finetune as _finetune

    if cfg.stage is not None:  # LLaVA's stage 1 or 2
        from .llava import setup

        return _finetune(cfg, resume=resume, build=setup)
    return _finetune(cfg, resume=resume)


__all__ = ["FinetuneConfig", "finetune"]
