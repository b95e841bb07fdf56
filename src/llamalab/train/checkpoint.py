"""Atomic, verified, resumable training checkpoints, read without running any code they contain.

    <out>/ckpt/step-000100/      a complete checkpoint (a directory appears under this name only by rename)
        .metadata, *.distcp      model + optimizer tensors, written by torch.distributed.checkpoint (sharded
                                 for FSDP, re-shardable: resume on a different number of ranks works)
        rank-00000.json ...      per-rank RNG states (torch, cuda, numpy, python)
        trainer.json             step, data-loader state, optimizer hyperparameters (param_groups)
        meta.json                step, ModelArgs, TrainConfig, the size and SHA-256 of every file above and
                                 a checksum of its own content — written last
    <out>/ckpt/step-000200.tmp/  being written; ignored by `latest` and removed by the next run
    <out>/ckpt/step-000200.corrupt/  one that failed verification, set aside when that step is written again

Every file and the directory are fsynced before the rename, so a crash (even SIGKILL) at any moment
leaves the previous complete checkpoint in place. Resume takes the newest checkpoint that verifies
(sizes, checksums, parseable state) and names each newer one it skipped and why.

No pickle is loaded: our own state is JSON, and the one pickle torch.distributed.checkpoint writes
(`.metadata`) is read with an unpickler that only builds DCP's metadata records; a checkpoint whose
metadata asks for anything else, or that stores pickled objects instead of tensors, is corrupt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.metadata as dcp_metadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..atomic import refused_write, sha256_file
from ..config import ModelArgs
from ..bounded import read_json
from ..errors import LlamalabError

_COMPLETE = re.compile(r"^step-(\d{6,})$")
META, TRAINER = "meta.json", "trainer.json"


class CorruptCheckpoint(LlamalabError):
    """A checkpoint that fails verification: resume skips it."""


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _COMPLETE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(ckpt_dir: Path) -> Path | None:
    done = complete_checkpoints(ckpt_dir)
    return done[-1] if done else None


# --- verification ---

def _self_checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        d = read_json(path)
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{path.name} is missing") from None
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{path.name} is unreadable ({e})") from None
    if not isinstance(d, dict):
        raise CorruptCheckpoint(f"{path.name} does not hold a JSON object")
    return d


def read_meta(path: Path) -> dict:
    meta = _read_json(path / META)
    if "files" not in meta:
        raise CorruptCheckpoint(f"{META} has no checksums (written by an older llamalab, whose checkpoints "
                                f"held pickles: it cannot be resumed safely)")
    if meta.get("checksum") != _self_checksum(meta):
        raise CorruptCheckpoint(f"{META} does not match its checksum")
    return meta


def verify(path: Path) -> dict:
    """The checkpoint's meta, once every file it lists has its recorded size and SHA-256 (CorruptCheckpoint if not)."""
    meta = read_meta(path)
    files = meta["files"]
    if not isinstance(files, dict) or ".metadata" not in files or TRAINER not in files:
        raise CorruptCheckpoint(f"{META} lists no .metadata or no {TRAINER}")
    for name, entry in sorted(files.items()):
        f = path / name
        if Path(name).name != name or name == META:
            raise CorruptCheckpoint(f"{META} lists a file outside the checkpoint: {name!r}")
        if not (isinstance(entry, list) and len(entry) == 2):
            raise CorruptCheckpoint(f"{META} has no size and checksum for {name}")
        if not f.is_file():
            raise CorruptCheckpoint(f"{name} is missing")
        if f.stat().st_size != entry[0]:
            raise CorruptCheckpoint(f"{name} has {f.stat().st_size} bytes, {entry[0]} were written")
        if sha256_file(f) != entry[1]:
            raise CorruptCheckpoint(f"{name} does not match its checksum")
    trainer = _read_json(path / TRAINER)
    if trainer.get("step") != meta.get("step") or not isinstance(trainer.get("loader"), dict) \
            or not isinstance(trainer.get("param_groups"), list):
        raise CorruptCheckpoint(f"{TRAINER} does not hold the trainer state of step {meta.get('step')}")
    _read_dcp_metadata(path)
    return meta


def newest_intact(ckpt_dir: Path, *, warn=print) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies and its meta; `warn` is told of each newer one skipped.
    None when there is no checkpoint at all; LlamalabError when there are some but none is intact."""
    skipped = []
    for path in reversed(complete_checkpoints(ckpt_dir)):
        try:
            meta = verify(path)
        except CorruptCheckpoint as e:
            skipped.append(f"{path.name} ({e})")
            continue
        if skipped and warn:
            warn(f"warning: skipped checkpoint(s) that failed verification: {'; '.join(skipped)}; resuming from "
                 f"{path.name}")
        return path, meta
    if skipped:
        raise LlamalabError(f"no intact checkpoint in {ckpt_dir}: {'; '.join(skipped)}; remove them to start "
                            f"over, or choose another out_dir")
    return None


def check_compatible(path: Path, meta: dict, args: ModelArgs) -> None:
    """A LlamalabError if the checkpoint was trained with a different model shape."""
    saved = ModelArgs.from_dict(meta["model_args"])
    if saved != args:
        diff = {k: (v, getattr(args, k)) for k, v in saved.to_dict().items() if v != getattr(args, k)}
        raise LlamalabError(
            f"checkpoint {path} was trained with a different model ({', '.join(f'{k}: {a} in the checkpoint, {b} now' for k, (a, b) in diff.items())}); "
            f"use the same model config to resume, or a new out_dir")


# --- torch.distributed.checkpoint, read safely ---

class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata records (plain dataclasses), torch.Size, dtypes and layouts; nothing else."""
    EXTRA = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
             ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}

    def find_class(self, module, name):
        obj = getattr(dcp_metadata, name, None) if module == dcp_metadata.__name__ else None
        if ((module, name) in self.EXTRA or (isinstance(obj, type) and obj.__module__ == module)
                or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))):
            return super().find_class(module, name)
        raise CorruptCheckpoint(f".metadata asks for {module}.{name}, which a checkpoint never holds")


def _read_dcp_metadata(path: Path):
    try:
        with open(path / ".metadata", "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except CorruptCheckpoint:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to parse is corruption
        raise CorruptCheckpoint(f".metadata is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise CorruptCheckpoint(".metadata does not hold checkpoint metadata")
    for info in (metadata.storage_data or {}).values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or Path(name).name != name or not (path / name).is_file():
            raise CorruptCheckpoint(f".metadata points at {name!r}, not a file of this checkpoint")
    return metadata


class _SafeReader(dcp.FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        metadata = _read_dcp_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _TensorsOnly(dcp.DefaultLoadPlanner):
    def load_bytes(self, read_item, value):  # DCP would torch.load(weights_only=False) these
        raise CorruptCheckpoint(f"{read_item.dest_index.fqn} is stored as a pickled object; llamalab "
                                f"checkpoints hold only tensors")


# --- RNG states as JSON ---

def _tensor_b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _b64_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": _tensor_b64(torch.get_rng_state()),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = [_tensor_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    version, internal, gauss_next = state["python"]
    torch.set_rng_state(_b64_tensor(state["torch"]))
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_b64_tensor(s) for s in state["cuda"]])


# --- save and load ---

def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


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
    """Write checkpoint `step` atomically (all ranks call this). A failure (a full disk) leaves no
    `step-N.tmp` behind: the main rank removes it before the error goes on."""
    final = ckpt_dir / f"step-{step:06d}"
    tmp = ckpt_dir / f"step-{step:06d}.tmp"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    try:
        _write(tmp, final, step, model=model, optimizer=optimizer, loader_state=loader_state,
               model_args=model_args, config=config, world=world, trainable_only=trainable_only)
    except BaseException:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if world.is_main:
        for old in complete_checkpoints(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return final


def _write(tmp: Path, final: Path, step: int, *, model, optimizer, loader_state, model_args, config, world,
           trainable_only) -> None:
    """Fill `tmp` (every rank its part), then the main rank renames it to `final`."""
    model_sd, optim_sd = _state_dicts(model, optimizer, trainable_only)
    try:
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.save({"model": model_sd, "optim": {"state": optim_sd["state"]}}, checkpoint_id=tmp)
    except (Exception, dcp.CheckpointException) as e:  # the latter a BaseException wrapping each rank's error
        cause = next(iter(e.failures.values()))[0] if isinstance(e, dcp.CheckpointException) else e
        raise refused_write(tmp) or cause from None
    _write_json(tmp / f"rank-{world.rank:05d}.json", _rng_state())
    world.barrier()
    if world.is_main:
        _write_json(tmp / TRAINER, {"step": step, "loader": loader_state, "param_groups": optim_sd["param_groups"]})
        files = {f.name: [f.stat().st_size, sha256_file(f)] for f in sorted(tmp.iterdir())}
        meta = {"step": step, "model_args": model_args.to_dict(), "config": config, "world_size": world.world_size,
                "files": files}
        meta["checksum"] = _self_checksum(meta)
        (tmp / META).write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():  # a checkpoint of this step that resume skipped as corrupt: keep it aside
            shutil.rmtree(final.with_name(final.name + ".corrupt"), ignore_errors=True)
            os.replace(final, final.with_name(final.name + ".corrupt"))
        os.replace(tmp, final)
        _fsync(final.parent)


def load(path: Path, *, model, optimizer, world, trainable_only: bool = False) -> dict:
    """Restore model, optimizer and this rank's RNG states in place from a verified checkpoint; returns
    {"step", "loader"}."""
    trainer = _read_json(path / TRAINER)
    model_sd, optim_sd = _state_dicts(model, optimizer, trainable_only)
    state = {"model": model_sd, "optim": {"state": optim_sd["state"]}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=_SafeReader(path), planner=_TensorsOnly())
    except dcp.CheckpointException as e:  # a BaseException, holding each failed rank's exception
        cause = next(iter(e.failures.values()))[0]
        raise cause if isinstance(cause, CorruptCheckpoint) else CorruptCheckpoint(
            f"cannot restore {path.name}: {type(cause).__name__}: {cause}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict={"state": state["optim"]["state"], "param_groups": trainer["param_groups"]},
                   options=_options(trainable_only))
    rng = path / f"rank-{world.rank:05d}.json"
    if rng.exists():  # absent when resuming on more ranks than saved: the extra ranks keep their seed
        try:
            _set_rng_state(_read_json(rng))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CorruptCheckpoint(f"{rng.name} holds no valid RNG state ({e})") from None
    return {"step": trainer["step"], "loader": trainer["loader"]}


def remove_partial(ckpt_dir: Path) -> None:
    """Delete checkpoints a killed run left half-written."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob("step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
