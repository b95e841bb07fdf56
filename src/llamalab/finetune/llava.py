"""LLaVA's two training stages (Liu et al. 2023, §4.1) on the fine-tuning run and the pretraining loop's `fit`:

    stage 1  feature alignment: only the projector trains (the vision tower and the language model frozen),
             on image–caption pairs; `train_vision_tower: true` trains the tower too (a tower from scratch,
             as `llamalab demo --vision` has: no pretrained CLIP weights are reachable here)
    stage 2  end-to-end: the projector and the language model train — all of it, or LoRA adapters on it
             (`--lora-rank R`) — on instruction conversations

Both read LLaVA's JSON (`llava_data`), take the loss on the answers only, checkpoint only what trains (resume
as every fine-tuning run), and export the whole model — LoRA folded in — as a llava-hf directory that
`transformers.LlavaForConditionalGeneration` and `llamalab generate --image` load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ..errors import LlamalabError
from ..formats import llava as llava_format
from ..formats import load_tokenizer_for
from ..formats.lora import LoRALinear, apply_lora, check_rank
from ..runtime.distributed import init_distributed
from ..train import loop
from ..train.optim import build_optimizer
from .config import FinetuneConfig
from .data import split
from .llava_data import ImageLoader, encode, held_out_image_batches, load_records
from .run import Prepared, _check_same_recipe

METHODS = {1: "llava-stage1", 2: "llava-stage2"}


def set_trainable(model, stage: int, spec, train_tower: bool, seed: int) -> None:
    """Freeze all but what the stage trains; LoRA layers (stage 2 with a rank) go on the language model with
    A drawn as peft draws it and B zero, so training starts at the checkpoint."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    if train_tower:
        for p in model.vision_tower.parameters():
            p.requires_grad_(True)
    if stage == 2 and spec is None:
        for p in model.language_model.parameters():
            p.requires_grad_(True)
    elif stage == 2:
        apply_lora(model.language_model, spec)
        g = torch.Generator().manual_seed(seed)
        for m in model.language_model.modules():
            if isinstance(m, LoRALinear):
                nn.init.kaiming_uniform_(m.lora_a.weight, a=math.sqrt(5), generator=g)
                nn.init.zeros_(m.lora_b.weight)
                m.lora_a.weight.requires_grad_(True)
                m.lora_b.weight.requires_grad_(True)
    model.vision_tower.post_layernorm.requires_grad_(False)  # LLaVA reads no pooled output: no gradient reaches it


def merged_state(model) -> dict[str, torch.Tensor]:
    """The model's weights in `Llava`'s names, every LoRA layer folded in: W + scale · B A."""
    state = {k: v.detach().float() for k, v in model.state_dict().items()
             if ".lora_a." not in k and ".lora_b." not in k}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            w = state.pop(f"{name}.base.weight")
            state[f"{name}.weight"] = w + m.scale * (m.lora_b.weight.float() @ m.lora_a.weight.float())
    if model.args.text.tie_embeddings:
        state.pop("language_model.output.weight", None)
    return state


def _exporter(source_path: Path, tokenizer):
    pre = source_path / "preprocessor_config.json"

    def export(run: loop.Run) -> dict:
        out = run.out / "model"
        processor = json.loads(pre.read_text()) if pre.is_file() else None
        llava_format.save(merged_state(run.model), run.model.args, out, tokenizer_src=tokenizer,
                          preprocess=processor, force=True)  # a resumed run re-exports
        return {"model_dir": str(out)}
    return export


def check_config(cfg: FinetuneConfig) -> None:
    if cfg.parallel != "none" or cfg.tensor_parallel > 1:
        raise LlamalabError(f"LLaVA stages train in one process (parallel=none), not parallel={cfg.parallel} / "
                            f"tensor_parallel={cfg.tensor_parallel}")
    if cfg.format not in ("auto", "sharegpt", "llava"):
        raise LlamalabError(f"--stage reads LLaVA's JSON (conversations with an image), not --format {cfg.format}")
    if not Path(cfg.init_from).exists() or not llava_format.is_llava(Path(cfg.init_from)):
        raise LlamalabError(f"{cfg.init_from}: --stage {cfg.stage} trains a LLaVA checkpoint (a llava-hf directory: "
                            f"config.json with model_type llava); `llamalab demo --vision` writes one")


def setup(cfg: FinetuneConfig, *, resume: bool = False) -> tuple[loop.Run, Prepared]:
    """Everything the user can get wrong (records, images, lengths, the recipe of a resumed run) is checked
    before a file is written."""
    check_config(cfg)
    world = init_distributed(cfg.device)
    records = load_records(cfg.data, cfg.image_dir)
    model = llava_format.load_model(cfg.init_from)  # float32, to train: not the runtime's inference kernels
    tokenizer = load_tokenizer_for("hf", Path(cfg.init_from), model.args.text.vocab_size)
    if tokenizer is None:
        raise LlamalabError(f"{cfg.init_from} ships no tokenizer; put tokenizer.json beside the weights")
    args = model.args
    cfg = cfg.with_context(args.text.max_seq_len)
    if cfg.seq_len > args.text.max_seq_len:
        raise LlamalabError(f"seq_len {cfg.seq_len} is longer than {cfg.init_from}'s context "
                            f"({args.text.max_seq_len} positions)")
    spec = cfg.lora_spec()
    if spec is not None:
        check_rank(args.text, spec)
    pre = llava_format.preprocess_for(Path(cfg.init_from), args)
    train_rec, val_rec = split(records, cfg.val_split, cfg.seed)
    enc = dict(image_token=args.image_token_id, n_tokens=args.image_tokens, seen=set())
    train_ex, train_counts = encode(train_rec, tokenizer, cfg.template, cfg.seq_len + 1, **enc)
    val_ex, val_counts = encode(val_rec, tokenizer, cfg.template, cfg.seq_len + 1, **enc)
    cfg = cfg.with_steps(len(train_ex), 1)
    resume_from = loop.resume_point(cfg, args.text, resume, world)
    if resume_from is not None:
        _check_same_recipe(cfg, resume_from)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id or 0
    loader = ImageLoader(train_ex, batch_size=cfg.micro_batch_size, seq_len=cfg.seq_len, seed=cfg.seed, pad_id=pad,
                         pre=pre)
    val = held_out_image_batches(val_ex, batch_size=cfg.micro_batch_size, seq_len=cfg.seq_len, pad_id=pad,
                                 pre=pre) if val_ex else None

    torch.manual_seed(cfg.seed)
    set_trainable(model, cfg.stage, spec, cfg.train_vision_tower, cfg.seed)
    model.to(world.device).train()
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    run = loop.Run(cfg, world, args.text, model, model, optimizer, loader, val,
                   export=_exporter(Path(cfg.init_from), tokenizer), bf16=loop.use_bf16(cfg, world.device),
                   accum=cfg.grad_accum, resume_from=resume_from, trainable_only=True, eval_at_start=True,
                   title=f"LLaVA stage {cfg.stage} from {Path(cfg.init_from).name}")
    method = METHODS[cfg.stage] + ("" if cfg.stage == 1 else "-lora" if spec else "-full")
    info = Prepared("llava", {"train": train_counts, "validation": val_counts}, len(train_ex), len(val_ex), [],
                    tokenizer, cfg.template, method=method)
    return run, info
