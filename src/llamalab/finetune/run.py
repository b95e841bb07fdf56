"""A fine-tuning run: instruction data and a checkpoint (with LoRA layers, optionally on a 4-bit base, or
LLaMA-Adapter's gated prompts) made into a `train.loop.Run`, trained by the pretraining loop's `fit`, then
reported:

    data → template → token ids + loss masks → train / validation split → the checkpoint's model
    (meta → LoRA or adaption prompts → parallelisms → its weights, adapters initialized) → quantize the
    base? → AdamW → fit (held-out loss before and after, checkpoints, resume) → adapter (peft layout) or HF model
    → report.json: examples used / truncated / skipped, parameters, losses, sample answers
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..atomic import write_text
from ..bounded import read_json
from ..chat_templates import render_for
from ..errors import LlamalabError
from ..formats import adaption_prompt, save
from ..formats.lora import apply_lora, check_rank, lora_init
from ..formats.peft import save_adapter
from ..generate import decode_text, generate
from ..runtime.distributed import init_distributed
from ..train import loop, parallel
from ..train.checkpoint import read_meta
from ..train.init_from import load_source
from ..train.optim import build_optimizer
from .config import FinetuneConfig
from .data import InstructionLoader, encode_examples, held_out_batches, split
from .qlora import frozen_bytes, quantize_base
from .records import load_examples


@dataclass
class Prepared:
    """What the report needs besides the loop's summary."""

    format: str
    counts: dict
    train_examples: int
    val_examples: int
    prompts: list[dict]  # held-out {instruction, reference, ids} for sample answers
    tokenizer: object
    template: str | None
    memory: dict = field(default_factory=dict)
    method: str | None = None  # the report's name of the method, when not full / lora / qlora (LLaVA's stages)


def setup(cfg: FinetuneConfig, *, resume: bool = False) -> tuple[loop.Run, Prepared]:
    """Everything the user can get wrong is checked before a file is written."""
    if cfg.tensor_parallel > 1:
        raise LlamalabError("fine-tuning with tensor_parallel is not supported yet (the LoRA layers are not "
                            "sharded); use parallel=fsdp or ddp")
    world = init_distributed(cfg.device)
    spec = cfg.lora_spec()
    template_name = cfg.template
    fmt, records = load_examples(cfg.data, cfg.format, alpaca_input=template_name == "alpaca")
    source = load_source(cfg)
    if spec is not None:
        check_rank(source.args, spec)
    cfg = cfg.with_context(source.args.max_seq_len).with_adapter(source.args.n_layers)
    if source.tokenizer is None:
        raise LlamalabError(f"{source.path} ships no tokenizer; fine-tuning renders and tokenizes the data with "
                            f"the checkpoint's own (put tokenizer.json / tokenizer.model next to the weights)")
    train_rec, val_rec = split(records, cfg.val_split, cfg.seed)
    train_ex, train_counts = encode_examples(train_rec, source.tokenizer, template_name, cfg.seq_len + 1,
                                             progress=world.is_main and cfg.progress)
    val_ex, val_counts = encode_examples(val_rec, source.tokenizer, template_name, cfg.seq_len + 1)
    counts = {"train": train_counts, "validation": val_counts}
    cfg = cfg.with_steps(len(train_ex), world.world_size)
    resume_from = loop.resume_point(cfg, source.args, resume, world)
    if resume_from is not None:
        _check_same_recipe(cfg, resume_from)
    pad = source.tokenizer.pad_id if source.tokenizer.pad_id is not None else source.tokenizer.eos_id or 0
    loader = InstructionLoader(train_ex, batch_size=cfg.micro_batch_size, seq_len=cfg.seq_len, seed=cfg.seed,
                               pad_id=pad, rank=world.rank, world_size=world.world_size)
    val = held_out_batches(val_ex, batch_size=cfg.micro_batch_size, seq_len=cfg.seq_len, pad_id=pad,
                           rank=world.rank, world_size=world.world_size) if val_ex else None

    torch.manual_seed(cfg.seed)
    bf16 = loop.use_bf16(cfg, world.device)
    full_tensor = source.full_tensor
    adapt = None
    if spec is not None:
        full_tensor = lora_init(source.full_tensor, torch.Generator().manual_seed(cfg.seed))
        adapt = lambda model: apply_lora(model, spec)  # noqa: E731
    elif cfg.method == "llama-adapter":
        full_tensor = adaption_prompt.prompt_init(source.full_tensor, torch.Generator().manual_seed(cfg.seed))
        adapt = lambda model: adaption_prompt.add_prompts(model, cfg.adapter_len, cfg.adapter_layers)  # noqa: E731
    model, train_model = parallel.build_parallel_model(
        source.args, world=world, parallel=cfg.parallel, activation_checkpointing=cfg.activation_checkpointing,
        compile=cfg.compile, bf16=bf16, full_tensor=full_tensor, adapt=adapt)
    source.state.clear()
    memory = {}
    if spec is not None:
        memory["base_bytes"] = frozen_bytes(model)
        if cfg.quantize_base:
            quantize_base(model, cfg.quantize_base)
            memory["base_bytes_quantized"] = frozen_bytes(model)
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    prompts = _sample_prompts(val_rec if val_rec else train_rec, source.tokenizer, template_name, cfg.samples)
    run = loop.Run(cfg, world, source.args, model, train_model, optimizer, loader,
                   (lambda: val) if val else None, export=_exporter(cfg, spec, source), bf16=bf16,
                   accum=cfg.grad_accum, resume_from=resume_from, trainable_only=cfg.method != "full",
                   eval_at_start=True, title=f"fine-tuning {source.path.name}")
    info = Prepared(fmt, counts, len(train_ex), len(val_ex), prompts, source.tokenizer, template_name, memory)
    return run, info


RECIPE = ("init_from", "data", "format", "template", "val_split", "seq_len", "seed", "lora_rank", "lora_alpha",
          "lora_targets", "quantize_base", "method", "adapter_len", "adapter_layers", "stage", "image_dir",
          "train_vision_tower")  # what a resumed run must share with the run it continues


def _check_same_recipe(cfg: FinetuneConfig, checkpoint_dir) -> None:
    saved = read_meta(checkpoint_dir).get("config", {})
    changed = [k for k in RECIPE if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        k = changed[0]
        raise LlamalabError(f"{checkpoint_dir} was trained with {k}={saved[k]!r}, this run has {getattr(cfg, k)!r}; "
                            f"resume with the same settings, or choose another --out")


def _sample_prompts(records, tokenizer, template, n: int) -> list[dict]:
    """The first `n` records as prompts (up to their first answer) for sample answers."""
    out = []
    for _, example in records[:n]:
        if "prompt" in example:
            out.append({"instruction": example["prompt"], "reference": example["completion"],
                        "ids": tokenizer.encode(example["prompt"], bos=tokenizer.add_bos)})
            continue
        msgs = example["messages"]
        first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        text = render_for(tokenizer, msgs[:first], template, add_generation_prompt=True)
        out.append({"instruction": msgs[first - 1]["content"] if first else "", "reference": msgs[first]["content"],
                    "ids": tokenizer.encode(text, bos=False)})
    return out


@torch.no_grad()
def answer(model, tokenizer, prompts: list[dict], max_new_tokens: int = 96) -> list[str]:
    """Greedy answers of `model` to each prompt, as `llamalab chat` would give them."""
    was_training = model.training
    model.eval()
    try:
        return [decode_text(generate(model, [p["ids"]], max_new_tokens=max_new_tokens, stop_ids=tokenizer.stop_ids)[0],
                            tokenizer, stop_ids=tokenizer.stop_ids).strip() for p in prompts]
    finally:
        model.train(was_training)


def _exporter(cfg: FinetuneConfig, spec, source):
    """The run's final artifact: the adapter in peft's layout (LoRA, or `adaption_prompt` for LLaMA-Adapter) or
    a HF model directory carrying the checkpoint's tokenizer and chat template (full fine-tuning)."""
    def export(run: loop.Run) -> dict:
        if cfg.method == "full":
            state = parallel.full_state_dict(run.model)
            out = run.out / "model"
            if run.world.is_main:
                save({k: v.float() for k, v in state.items()}, run.args, out, "hf", source.tokenizer)
            return {"model_dir": str(out)}
        state = parallel.full_state_dict(run.model, trainable_only=True)
        out = run.out / "adapter"
        if run.world.is_main and spec is None:
            adaption_prompt.save(out, state, cfg.adapter_len, cfg.adapter_layers, base=str(source.path))
        elif run.world.is_main:
            save_adapter(out, state, spec, run.args, base=str(source.path))
        return {"adapter_dir": str(out)}
    return export


def finetune(cfg: FinetuneConfig, *, resume: bool = False, build=None) -> dict:
    """Fine-tune (or resume fine-tuning) and write DIR/report.json; returns the report. `build`: what makes the
    run instead of `setup` (LLaVA's stages: `finetune.llava.setup`)."""
    run, info = (build or setup)(cfg, resume=resume)
    world, samples_file = run.world, run.out / "samples-before.json"
    # FSDP2 shards cannot generate on one rank; compiled blocks would recompile for every decoding shape
    single = (world.world_size == 1 or run.cfg.parallel != "fsdp") and not run.cfg.compile
    if world.is_main and single and info.prompts and not samples_file.exists():
        run.out.mkdir(parents=True, exist_ok=True)
        write_text(samples_file, json.dumps(answer(run.model, info.tokenizer, info.prompts), indent=1))
    summary = loop.fit(run)
    report = None
    if world.is_main:
        before = read_json(samples_file) if samples_file.exists() else [None] * len(info.prompts)
        after = answer(run.model, info.tokenizer, info.prompts) if single else [None] * len(info.prompts)
        trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        report = {
            "model": str(run.cfg.init_from), "data": str(run.cfg.data), "format": info.format,
            "template": info.template or "the checkpoint's own",
            "method": info.method or {"nf4": "qlora-nf4", "int8": "lora-int8"}.get(run.cfg.quantize_base, run.cfg.method),
            **({"adapter_len": run.cfg.adapter_len, "adapter_layers": run.cfg.adapter_layers}
               if run.cfg.method == "llama-adapter" else {}),
            "examples": info.counts, "train_examples": info.train_examples, "val_examples": info.val_examples,
            "trainable_params": trainable, "total_params": summary["params"], **info.memory,
            "steps": summary["step"], "epochs": round(run.loader.epochs(), 3),
            "val_loss_before": summary.get("val_loss_before"), "val_loss_after": summary.get("val_loss"),
            "train_loss_last": summary.get("loss"), "tokens_per_s": summary.get("tokens_per_s"),
            "samples": [{"instruction": p["instruction"], "reference": p["reference"], "before": b, "after": a}
                        for p, b, a in zip(info.prompts, before, after)],
            **{k: summary[k] for k in ("adapter_dir", "model_dir", "loss_png") if k in summary},
        }
        write_text(run.out / "report.json", json.dumps(report, indent=2) + "\n")
    world.barrier()
    return report
