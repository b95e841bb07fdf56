"""Distributed start-up, shared by training and inference: join the process group torchrun describes, or stay
one process, and say which rank, device and (data-parallel × tensor-parallel) mesh this process has."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..device import resolve_device
from ..tensor_parallel import device_mesh


@dataclass
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    tp: int = 1  # tensor-parallel size: consecutive ranks share one copy of the model, sharded by heads
    mesh: Any = None  # the (dp, tp) DeviceMesh when tp > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """Which data-parallel group this rank is in: the ranks of one group read the same batches."""
        return self.rank // self.tp

    @property
    def dp_size(self) -> int:
        return self.world_size // self.tp

    def barrier(self):
        if dist.is_initialized():
            dist.barrier()


def init_distributed(device: str = "auto", tensor_parallel: int = 1) -> World:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/...), or stay a single process; with
    tensor_parallel > 1, lay the ranks out as a (data-parallel × tensor-parallel) mesh."""
    device = resolve_device(device).type
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    mesh = device_mesh(dev.type, world_size, tensor_parallel) if tensor_parallel > 1 else None
    return World(rank, world_size, local_rank, dev, tensor_parallel, mesh)
