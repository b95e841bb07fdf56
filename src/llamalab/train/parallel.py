"""Distributed setup and the parallelisms, applied to the model from outside (torchtitan's order):

    Transformer on the meta device → activation checkpointing → torch.compile → FSDP2 `fully_shard`
    per block, then the root → materialize (`to_empty`) → seeded init (equal to a single-process init)
    → DDP (for parallel=ddp)

Everything works under `torchrun` (gloo on CPU, nccl on CUDA) and in a plain single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..config import ModelArgs
from ..device import default_device
from ..errors import LlamalabError
from ..fast import has_cxx_compiler
from ..model import Transformer, initial_weights


@dataclass
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if dist.is_initialized():
            dist.barrier()


def init_distributed(device: str = "auto") -> World:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/...), or stay a single process."""
    if device == "auto":
        device = default_device().type
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return World(rank, world_size, local_rank, dev)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.AVG if x.device.type == "cuda" else dist.ReduceOp.SUM)
        if x.device.type != "cuda":  # gloo has no AVG
            x /= dist.get_world_size()
    return x


def apply_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block's activations in the backward pass instead of storing them (paper §2.4)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: Transformer) -> None:
    """Compile each block separately (identical blocks share one compiled graph; compile stays fast)."""
    for block in model.layers:
        block.compile(fullgraph=True)


def apply_fsdp(model: Transformer, mixed_precision: bool) -> None:
    """FSDP2: shard every block's parameters across ranks, then the root (embeddings, norm, output)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {}
    if mixed_precision:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, **kw)
    fully_shard(model, **kw)


@torch.no_grad()
def init_weights(model: Transformer, std: float, generator: torch.Generator) -> None:
    """`Transformer.init_weights` also when parameters are FSDP2 shards: each rank keeps its own shard of
    every full tensor drawn by `initial_weights` (so any world size starts from the same model)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    model.init_buffers()
    for p, full in initial_weights(model, std, generator):
        if isinstance(p, DTensor):
            p.to_local().copy_(distribute_tensor(full.to(p.device), p.device_mesh, p.placements).to_local())
        else:
            p.copy_(full)


def build_parallel_model(args: ModelArgs, *, world: World, parallel: str, activation_checkpointing: bool,
                         compile: bool, bf16: bool, std: float, seed: int) -> tuple[Transformer, nn.Module]:
    """(model, train_model): `model` is the Transformer (its state dict names are Meta's); `train_model` is
    what the forward pass calls (the DDP wrapper, or the model itself)."""
    with torch.device("meta"):
        model = Transformer(args)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        if world.device.type == "cpu" and not has_cxx_compiler():
            raise LlamalabError("compile=true on CPU needs a C++ compiler (torch.compile generates C++): install "
                                "g++ or set CXX, or set compile=false")
        apply_compile(model)
    if parallel == "fsdp":
        apply_fsdp(model, mixed_precision=bf16)
    model.to_empty(device=world.device)
    model.tie_weights()
    init_weights(model, std, torch.Generator().manual_seed(seed))
    train_model = model
    if parallel == "ddp" and world.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[world.local_rank] if world.device.type == "cuda" else None)
    return model, train_model
