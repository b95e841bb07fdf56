"""The parallelisms, applied to the model from outside (torchtitan's order; start-up is `runtime.distributed`):

    Transformer on the meta device → (fine-tuning: LoRA layers) → tensor (and sequence) parallelism over
    the mesh's "tp" dimension → activation checkpointing → torch.compile → FSDP2 `fully_shard` per block,
    then the root, over the "dp" dimension → `to_empty` → initial values (a seeded draw equal to a
    single-process init, or a checkpoint's tensors), each rank keeping its shard → DDP (for parallel=ddp)

and what the training loop does differently under each parallelism: the autocast policy, skipping DDP's
gradient all-reduce during accumulation, the gradient norm of sharded parameters, and gathering a full
state dict in the bare model's names. Everything works under `torchrun` (gloo on CPU, nccl on CUDA) and
in a plain single process.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn

from ..config import ModelArgs
from ..device import has_cxx_compiler
from ..errors import LlamalabError
from ..model import Transformer, initial_value
from ..runtime.distributed import World
from ..tensor_parallel import apply_tensor_parallel


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


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
    """Compile each block separately (identical blocks share one compiled graph; compile stays fast). Random
    numbers (LoRA's dropout) come from torch's generator as in eager mode, not inductor's per-element Philox,
    which on CPU made dropout masks twice as slow as eager's (a quarter of a LoRA step)."""
    for block in model.layers:
        block.compile(fullgraph=True, options={"fallback_random": True})


def apply_fsdp(model: Transformer, mixed_precision: bool, mesh=None) -> None:
    """FSDP2: shard every block's parameters across ranks (of `mesh`: the data-parallel dimension), then the
    root (embeddings, norm, output)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {"mesh": mesh}
    if mixed_precision:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, **kw)
    fully_shard(model, **kw)


def clean_name(name: str) -> str:
    """A parameter name as the bare Transformer has it: without the activation-checkpointing and compile
    wrappers' prefixes (the full-state-dict and checkpoint names are Meta's)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def random_init(args: ModelArgs, std: float, generator: torch.Generator):
    """`full_tensor` (see `materialize`) for pretraining: `model.initial_value`, drawn from `generator` in the
    parameters' order (the draws of `Transformer.init_weights`)."""
    return lambda name, shape, dtype: initial_value(name, shape, dtype, args.n_layers, std, generator)


@torch.no_grad()
def materialize(model: nn.Module, full_tensor) -> None:
    """Give every parameter its value, also when parameters are FSDP2 shards: `full_tensor(name, shape,
    dtype)` computes each full tensor on CPU (a seeded draw, or a checkpoint's tensor), and each rank keeps
    its own shard — so an N-rank model starts equal to the one-process model."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    model.init_buffers()
    for name, p in model.named_parameters():
        full = full_tensor(clean_name(name), p.shape, p.dtype)
        if isinstance(p, DTensor):
            p.to_local().copy_(distribute_tensor(full.to(p.device), p.device_mesh, p.placements).to_local())
        else:
            p.copy_(full)


def build_parallel_model(args: ModelArgs, *, world: World, parallel: str, activation_checkpointing: bool,
                         compile: bool, bf16: bool, full_tensor, adapt=None,
                         sequence_parallel: bool = False) -> tuple[Transformer, nn.Module]:
    """(model, train_model): `model` is the Transformer (its state dict names are Meta's); `train_model` is
    what the forward pass calls (the DDP wrapper, or the model itself). `full_tensor` gives each parameter
    its initial value (see `materialize`); `adapt(model)` changes the model on the meta device before any
    parallelism is applied (fine-tuning adds its LoRA layers there). With world.tp > 1 the logits are
    sharded over the vocabulary: compute the loss under `vocab_parallel_loss`."""
    with torch.device("meta"):
        model = Transformer(args)
    if adapt is not None:
        adapt(model)
    if world.tp > 1:
        apply_tensor_parallel(model, world.mesh["tp"], sequence_parallel=sequence_parallel, loss_parallel=True)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        if world.device.type == "cpu" and not has_cxx_compiler():
            raise LlamalabError("compile=true on CPU needs a C++ compiler (torch.compile generates C++): install "
                                "g++ or set CXX, or set compile=false")
        apply_compile(model)
    if parallel == "fsdp":
        apply_fsdp(model, mixed_precision=bf16, mesh=world.mesh["dp"] if world.mesh is not None else None)
    model.to_empty(device=world.device)
    model.tie_weights()
    materialize(model, full_tensor)
    train_model = model
    if parallel == "ddp" and world.dp_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[world.local_rank] if world.device.type == "cuda" else None)
    return model, train_model


# ------------------------------------------------------- what the loop does differently under each parallelism

def autocast(device: torch.device, bf16: bool, parallel: str):
    """The forward pass's precision context: bf16 autocast, except under FSDP2, which casts parameters
    through its MixedPrecisionPolicy instead (and fp32 runs need nothing)."""
    if bf16 and parallel != "fsdp":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def no_sync(train_model: nn.Module, sync: bool):
    """DDP all-reduces gradients in every backward; during gradient accumulation only the last micro-batch
    needs to (`sync`). FSDP2 and single processes have nothing to skip."""
    if sync or not hasattr(train_model, "no_sync"):
        return contextlib.nullcontext()
    return train_model.no_sync()


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Clip the global gradient norm; returns the norm before clipping (a DTensor under FSDP2 or tensor
    parallelism, made whole)."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm.item()


def full_state_dict(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on CPU in the bare Transformer's names; every rank must call this
    (FSDP2 gathers the shards), rank 0 uses the result. trainable_only: the parameters being trained."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    state = {clean_name(k): v for k, v in get_model_state_dict(model, options=options).items()}
    if trainable_only:  # torch keeps a frozen tied weight (output = embedding) all the same
        keep = {clean_name(n) for n, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in keep}
    return state
