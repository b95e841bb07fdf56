"""Atomic, resumable training checkpoints.

    <out>/ckpt/step-000100/      a complete checkpoint (a directory appears under this name only by rename)
        .metadata, *.distcp      model + optimizer, written by torch.distributed.checkpoint (sharded for FSDP,
                                 and re-shardable: resume on a different number of ranks works)
        rank-00000.pt ...        per-rank RNG states (torch, cuda, numpy, python)
        trainer.pt               step, data-loader state
        meta.json                step, ModelArgs, TrainConfig — written last
    <out>/ckpt/step-000200.tmp/  being written; ignored by `latest` and removed by the next run

Every file and the directory are fsynced before the rename, so a crash (even SIGKILL) at any moment
leaves `latest` pointing at the previous complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..config import ModelArgs
from ..errors import LlamalabError

_COMPLETE = re.compile(r"^step-(\d{6,})$")


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _COMPLETE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(ckpt_dir: Path) -> Path | None:
    done = complete_checkpoints(ckpt_dir)
    return done[-1] if done else None


def read_meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def check_compatible(path: Path, args: ModelArgs) -> dict:
    """The checkpoint's meta, or a LlamalabError if it was trained with a different model shape."""
    meta = read_meta(path)
    saved = ModelArgs.from_dict(meta["model_args"])
    if saved != args:
        diff = {k: (v, getattr(args, k)) for k, v in saved.to_dict().items() if v != getattr(args, k)}
        raise LlamalabError(
            f"checkpoint {path} was trained with a different model ({', '.join(f'{k}: {a} in the checkpoint, {b} now' for k, (a, b) in diff.items())}); "
            f"use the same model config to resume, or a new out_dir")
    return meta


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _options(trainable_only: bool) -> StateDictOptions | None:
    """trainable_only: the model part holds only parameters with requires_grad (a LoRA run's adapters; the
    frozen base is rebuilt from its own checkpoint)."""
    return StateDictOptions(ignore_frozen_params=True, strict=False) if trainable_only else None


def _state_dicts(model, optimizer, trainable_only: bool) -> tuple[dict, dict]:
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(trainable_only))
    if trainable_only:  # torch keeps a frozen tied weight (output = embedding) all the same
        keep = {n.replace("_checkpoint_wrapped_module.", "") for n, p in model.named_parameters() if p.requires_grad}
        model_sd = {k: v for k, v in model_sd.items() if k in keep}
    return model_sd, optim_sd


def save(ckpt_dir: Path, step: int, *, model, optimizer, loader_state: dict, model_args: ModelArgs,
         config: dict, world, keep_last: int, trainable_only: bool = False) -> Path:
    """Write checkpoint `step` atomically (all ranks call this)."""
    final = ckpt_dir / f"step-{step:06d}"
    tmp = ckpt_dir / f"step-{step:06d}.tmp"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    model_sd, optim_sd = _state_dicts(model, optimizer, trainable_only)
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    torch.save(_rng_state(), tmp / f"rank-{world.rank:05d}.pt")
    if os.environ.get("LLAMALAB_TEST_KILL_IN_CHECKPOINT") == str(step):  # test hook: die mid-write
        os.kill(os.getpid(), signal.SIGKILL)
    world.barrier()
    if world.is_main:
        torch.save({"step": step, "loader": loader_state}, tmp / "trainer.pt")
        meta = {"step": step, "model_args": model_args.to_dict(), "config": config, "world_size": world.world_size}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(ckpt_dir)
        for old in complete_checkpoints(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return final


def load(path: Path, *, model, optimizer, world, trainable_only: bool = False) -> dict:
    """Restore model, optimizer and this rank's RNG states in place; returns {"step", "loader"}."""
    model_sd, optim_sd = _state_dicts(model, optimizer, trainable_only)
    state = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options(trainable_only))
    rng = path / f"rank-{world.rank:05d}.pt"
    if rng.exists():  # absent when resuming on more ranks than saved: the extra ranks keep their seed
        _set_rng_state(torch.load(rng, weights_only=False))
    return torch.load(path / "trainer.pt", weights_only=False)


def remove_partial(ckpt_dir: Path) -> None:
    """Delete checkpoints a killed run left half-written."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob("step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
