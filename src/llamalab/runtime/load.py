"""The one way a workflow gets a model it can run: `load_runnable`.

    rt = load_runnable("SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu")
    ids = rt.encode_chat([{"role": "user", "content": "Hi"}])
    engine = rt.engine(max_batch=8, max_len=2048)

It resolves the device (the GPU when there is one), loads the checkpoint (quantized weights stay quantized
unless a dtype is given; on CPU float projections run through our matrix-vector kernel, `quant.float_linear`), attaches a LoRA adapter, requires a tokenizer, resolves the chat template, and
under tensor parallelism joins the torchrun process group and keeps this rank's shard of the weights.
generate, chat, serve, eval (and lm-eval through its adapter), perplexity, self-instruct and judge all load
through it, so they share its checks and its messages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import library
from ..chat_templates import render_for, resolve_template
from ..config import ModelArgs
from ..device import resolve_device
from ..errors import LlamalabError
from ..formats import load
from ..formats.llava import preprocess_for
from ..generate import Engine
from ..images import Preprocess
from ..model import Transformer
from ..quant import route
from ..tensor_parallel import shard_for_inference, share
from ..tokenizer import Tokenizer
from ..vision import Llava
from .distributed import World, init_distributed


@dataclass
class Runnable:
    """A loaded model ready to decode: the model, its config and tokenizer, its chat template (None: neither
    asked for nor shipped), and the engines that run it."""
    model: Transformer
    args: ModelArgs
    tokenizer: Tokenizer
    template: str | None
    format: str
    path: Path | None
    source: str                     # what was asked for: a path or a hub id
    adapter: str | None = None
    compile: bool = False           # engines run the decode step through torch.compile
    world: World | None = None      # under tensor parallelism: this process's rank and device
    tensor_parallel: int = 1        # processes the weights are sharded over
    metadata: dict = field(default_factory=dict)
    vision: Llava | None = None     # a LLaVA checkpoint: the whole model (`model` is its language model)
    preprocess: Preprocess | None = None  # and how its images become pixels
    preset: dict = field(default_factory=dict)  # a library model's Modelfile: system, parameters, messages

    @property
    def is_main(self) -> bool:
        """Whether this process talks to the user (always, except the ranks > 0 of a tensor-parallel launch)."""
        return self.world is None or self.world.is_main

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    @property
    def name(self) -> str:
        """The model's name for reports and answer files: the file or directory name (+ the adapter's)."""
        name = Path(str(self.source).rstrip("/")).name.removesuffix(".gguf")
        return name + (f" + {Path(self.adapter).name}" if self.adapter else "")

    def engine(self, *, max_batch: int = 1, max_len: int | None = None) -> Engine:
        """A decoding engine of `max_batch` slots of `max_len` positions (default and at most the model's)."""
        return Engine(self.model, max_batch=max_batch, max_len=max_len, compile=self.compile)

    def encode_chat(self, messages: list[dict], template: str | None = None) -> list[int]:
        """The token ids of a conversation rendered with the chat template (the template places BOS itself)."""
        return self.tokenizer.encode(render_for(self.tokenizer, list(messages), template or self.template),
                                     bos=False)

    def encode(self, text: str) -> list[int]:
        """Plain text as the model reads it (with BOS where the tokenizer adds one)."""
        return self.tokenizer.encode(text, bos=self.tokenizer.add_bos)

    def agree_seed(self, seed: int | None, temperature: float | None) -> int | None:
        """Under tensor parallelism, unseeded sampling gets a seed drawn by rank 0, so that every rank samples
        the same tokens from the same logits (a collective: every rank calls it at the same point)."""
        if self.world is None or seed is not None or not (temperature or 0) > 0:
            return seed
        return share(random.getrandbits(63), self.world.device)


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        raise LlamalabError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return getattr(torch, dtype)


def library_preset(path_or_name) -> dict:
    """What a library model's Modelfile gave it (`library.preset`); {} for a path or an imported model."""
    if not isinstance(path_or_name, str) or Path(path_or_name).expanduser().exists() or \
            not library.looks_like_name(path_or_name) or library.full_name(path_or_name) not in library.names():
        return {}
    return library.preset(path_or_name)


def load_runnable(path_or_name, *, device=None, dtype=None, adapter=None, tensor_parallel: int = 1,
                  threads: int | None = None, template: str | None = None, compile: bool = False,
                  mmproj=None) -> Runnable:
    """The checkpoint `path_or_name` (a .gguf file, an HF or Meta directory, a hub id, a library name) as a
    `Runnable`.

    device: cpu, cuda, ... (default: the GPU when there is one); dtype: float32 | bfloat16 | float16 (or a
    torch.dtype), None keeps quantized weights quantized (else float32); adapter: a LoRA adapter directory
    (ours or peft's) run unmerged; tensor_parallel N > 1: shard the weights by heads over the N processes of a
    torchrun launch (every process loads the whole checkpoint and keeps its shard); threads: CPU threads for
    torch; template: the chat template (a name, a Jinja file; default the checkpoint's own), checked before
    the load; compile: engines compile the decode step; mmproj: llama.cpp's LLaVA projector file for a text
    GGUF (its vision tower and projector). The checkpoint must carry a tokenizer. A library model made with
    `llamalab create` brings its Modelfile's adapter and template (unless given here) and its defaults
    (`Runnable.preset`: system, parameters, messages)."""
    if tensor_parallel < 1:
        raise LlamalabError(f"--tensor-parallel must be >= 1, got {tensor_parallel}")
    if tensor_parallel > 1 and compile:
        raise LlamalabError("--compile does not combine with --tensor-parallel yet (torch.compile fails on the "
                            "sharded model); drop one of them")
    if tensor_parallel > 1 and adapter:
        raise LlamalabError("--adapter does not combine with --tensor-parallel (LoRA layers are not sharded): "
                            "fold it in first with `llamalab lora merge` and serve the merged checkpoint")
    preset = library_preset(path_or_name)
    adapter, template = adapter or preset.get("adapter"), template or preset.get("template")
    if template:
        resolve_template(template)  # a bad name fails before the (slow) load
    if threads:
        torch.set_num_threads(threads)
    dtype, world = _dtype(dtype), None
    if tensor_parallel > 1:
        dtype = dtype or torch.float32  # the shards are float weights: a quantized file is dequantized
        world = init_distributed(device or "auto")
    ckpt = load(path_or_name, device=str(resolve_device(device)), dtype=dtype, adapter=adapter, mmproj=mmproj)
    if ckpt.vision is not None and world is not None:
        raise LlamalabError(f"{path_or_name}: --tensor-parallel does not shard a LLaVA checkpoint's vision tower yet")
    if ckpt.tokenizer is None:
        raise LlamalabError(f"{path_or_name}: no tokenizer found with the checkpoint "
                            f"(put tokenizer.model or tokenizer.json next to it)")
    if world is not None:
        shard_for_inference(ckpt.model, tensor_parallel)
    else:  # float projections on CPU through our kernel (done already by `load` without a dtype)
        route(ckpt.model)
    chosen = resolve_template(template, ckpt.tokenizer) if template or ckpt.tokenizer.chat_template else None
    return Runnable(ckpt.model, ckpt.args, ckpt.tokenizer, chosen, ckpt.format, ckpt.path, str(path_or_name),
                    adapter=adapter and str(adapter), compile=compile, world=world, tensor_parallel=tensor_parallel,
                    metadata=ckpt.metadata, vision=ckpt.vision, preset=preset,
                    preprocess=ckpt.preprocess or (preprocess_for(ckpt.path, ckpt.vision.args)
                                                   if ckpt.vision is not None else None))
