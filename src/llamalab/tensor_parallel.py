"""Tensor and sequence parallelism (the paper's §2.4 "model and sequence parallelism": Shoeybi et al. 2019,
Korthikanti et al. 2022), applied to a `Transformer` from outside with PyTorch's DTensor plans:

    tok_embeddings  row-wise: each rank holds 1/tp of the vocabulary; the partial lookups are summed
    every block     wq wk wv w1 w3 column-wise: each rank computes its own heads / its own hidden units
                    wo w2 row-wise: partial sums, reduced once after attention and once after the MLP
    output          column-wise over the vocabulary; training takes the loss on the shards (`loss_parallel`)
                    and never gathers the (tokens × vocab) logits; generation gathers them

With sequence parallelism the norms (and the residual stream) hold 1/tp of the sequence, and each
all-reduce becomes a reduce-scatter plus an all-gather: the same traffic, 1/tp of those activations.

A rank holds n_heads/tp query heads and n_kv_heads/tp key/value heads; the model reads its head counts
from the tensor shapes, so `model.py` knows nothing of this.
"""

from __future__ import annotations

import contextlib
import json

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (ColwiseParallel, ParallelStyle, PrepareModuleInput, RowwiseParallel,
                                               SequenceParallel, loss_parallel, parallelize_module)

from .config import check_tensor_parallel
from .errors import LlamalabError


class ReplicateParallel(ParallelStyle):
    """A module every rank runs whole on the whole input (the norms without sequence parallelism): its
    parameters become replicated DTensors, so the optimizer, gradient clipping and checkpoints see DTensors
    only; it takes and returns plain tensors."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def to_dtensor(_, inputs, mesh):
            return tuple(x if isinstance(x, DTensor) else DTensor.from_local(x, mesh, (Replicate(),), run_check=False)
                         for x in inputs)

        return distribute_module(module, device_mesh, input_fn=to_dtensor,
                                 output_fn=lambda _, out, __: out.to_local())


def block_plan(sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """The plan of one TransformerBlock. `seq` is the residual stream's layout: whole on every rank, or
    split along the sequence (dim 1) with sequence parallelism; attention and the MLP see the whole sequence."""
    seq = Shard(1) if sequence_parallel else Replicate()
    norm = SequenceParallel() if sequence_parallel else ReplicateParallel()
    return {
        "attention_norm": norm,
        # Attention.forward(x, rotation, kv, pos, mask): only x is distributed
        "attention": PrepareModuleInput(input_layouts=(seq, None, None, None, None),
                                        desired_input_layouts=(Replicate(), None, None, None, None)),
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=seq),
        "ffn_norm": norm,
        "feed_forward": PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),)),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=seq),
    }


def root_plan(sequence_parallel: bool, loss_parallel: bool) -> dict[str, ParallelStyle]:
    """The plan of the embedding, the final norm and the output projection. loss_parallel: the logits stay
    sharded over the vocabulary (a DTensor) for `torch.distributed.tensor.parallel.loss_parallel`."""
    seq = Shard(1) if sequence_parallel else Replicate()
    return {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=seq),
        "norm": SequenceParallel(use_local_output=True) if sequence_parallel else ReplicateParallel(),
        "output": ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1) if loss_parallel else Replicate(),
                                  use_local_output=not loss_parallel),
    }


def apply_tensor_parallel(model: nn.Module, mesh: DeviceMesh, *, sequence_parallel: bool = False,
                          loss_parallel: bool = False) -> None:
    """Shard `model` (a Transformer, on any device, meta included) over the 1-D `mesh` in place."""
    check_tensor_parallel(model.args, mesh.size())
    parallelize_module(model, mesh, root_plan(sequence_parallel, loss_parallel))
    for block in model.layers:
        parallelize_module(block, mesh, block_plan(sequence_parallel))
    model.tie_weights()  # embedding and output are both sharded by vocabulary rows: one DTensor serves both


def shard_for_inference(model: nn.Module, tp: int) -> nn.Module:
    """`model`, loaded whole by every rank of a torchrun launch of `tp` processes, sharded by heads (and its
    KV cache with it) for generation: every rank runs the same decoding and gets the same tokens."""
    check_tensor_parallel(model.args, tp)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world != tp:
        raise LlamalabError(f"--tensor-parallel {tp} needs {tp} processes, one per shard, but this run has {world}: "
                            f"launch with `torchrun --nproc_per_node {tp} -m llamalab ...`")
    device = model.tok_embeddings.weight.device
    apply_tensor_parallel(model, init_device_mesh(device.type, (tp,)))
    return model


def share(obj, device: torch.device | str = "cpu"):
    """Rank 0's `obj` (plain JSON data: the next chat turn, the next engine operation) on every rank of the
    launch; `obj` is ignored elsewhere. Sent as JSON text (a length, then the bytes), never pickled. Without a
    process group, `obj` itself. NCCL needs `device` to be this rank's GPU."""
    if not dist.is_initialized():
        return obj
    main = dist.get_rank() == 0
    data = json.dumps(obj).encode() if main else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, src=0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if main
           else torch.empty(int(size), dtype=torch.uint8, device=device))
    dist.broadcast(buf, src=0)
    return obj if main else json.loads(buf.cpu().numpy().tobytes())


def device_mesh(device_type: str, world_size: int, tp: int) -> DeviceMesh:
    """The 2-D mesh (data-parallel × tensor-parallel) of a torchrun world: ranks r·tp … r·tp+tp-1 form one
    tensor-parallel group (neighbours: the same node, the fast links), `world_size / tp` such groups."""
    if world_size % tp:
        raise LlamalabError(f"tensor_parallel {tp} needs a multiple of {tp} processes but this launch has {world_size}; "
                            f"launch with torchrun --nproc_per_node {tp} (or a multiple, with parallel=fsdp)")
    return init_device_mesh(device_type, (world_size // tp, tp), mesh_dim_names=("dp", "tp"))


def vocab_parallel_loss(enabled: bool):
    """The context the loss (forward and backward) runs in: with tensor parallelism the logits stay sharded
    over the vocabulary and the cross-entropy is computed on the shards (`loss_parallel`)."""
    return loss_parallel() if enabled else contextlib.nullcontext()
