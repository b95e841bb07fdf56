"""The training loop, nanoGPT style: read it top to bottom.

    setup(cfg)   config → process group → data → model (meta → parallelisms → initial weights) → AdamW
    fit(run)     begin (resume?) → for each step: train_step; log; held-out loss; checkpoint
                 → finish (summary, loss curve, export)
    train_step   lr ← schedule; gradients accumulated over micro-batches; clip; update
    evaluate     held-out loss

Pretraining and continued pretraining (`train`) build their `Run` in `setup`; fine-tuning
(`llamalab.finetune`) builds one from instruction data and a checkpoint with LoRA layers; all run `fit`.
What differs under DDP / FSDP2 lives in `parallel.py`.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import threads
from ..config import ModelArgs, check_tensor_parallel
from ..data.loader import TokenLoader
from ..data.shards import read_manifest
from ..errors import LlamalabError
from ..formats import save
from ..runtime.distributed import init_distributed
from ..tensor_parallel import vocab_parallel_loss
from ..tokenizer import check_vocab, load_tokenizer
from . import checkpoint, parallel
from .init_from import check_data_tokenizer, load_source
from .metrics import MetricsLog, mfu, peak_flops, plot_loss
from .optim import build_optimizer, lr_at, set_lr
from .run_config import TrainConfig

IGNORE_INDEX = -100  # a target that counts for nothing: a prompt token of an instruction, padding


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the next-token predictions (logits (..., vocab), targets (...)), in fp32 (bf16 logits are
    upcast first); targets equal to IGNORE_INDEX count for nothing."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)


def loss_function(compile: bool, reduction: str = "sum", vocab_parallel: bool = False):
    """`next_token_loss` summed over tokens (the loop weighs every target token of a step equally, across
    micro-batches and ranks), compiled with `compile: true` (the blocks are compiled in build_parallel_model),
    so the upcast, log-softmax and its backward over the (tokens × vocab) logits run as fused loops.
    vocab_parallel: the logits are a DTensor sharded over the vocabulary (tensor parallelism; call it under
    `vocab_parallel_loss`); the loss, a replicated DTensor, comes back as this rank's plain tensor."""
    fn = functools.partial(next_token_loss, reduction=reduction)
    fn = torch.compile(fn, fullgraph=True) if compile else fn
    return (lambda logits, targets: fn(logits, targets).to_local()) if vocab_parallel else fn


def check_layout(cfg: TrainConfig, args: ModelArgs, world) -> None:
    """The parallel layout fits the model and the launch (tensor parallelism composes with FSDP2 only)."""
    if cfg.tensor_parallel == 1:
        return
    check_tensor_parallel(args, cfg.tensor_parallel, seq_len=cfg.seq_len if cfg.sequence_parallel else None)
    if cfg.compile:  # torch 2.13 (CPU, gloo): the first backward fails inside DTensor's redistribute
        raise LlamalabError("compile=true with tensor_parallel is not supported yet (torch.compile's backward "
                            "through the sharded blocks fails); set compile=false")
    if world.dp_size > 1 and cfg.parallel != "fsdp":
        raise LlamalabError(f"{world.world_size} processes with tensor_parallel {cfg.tensor_parallel} make "
                            f"{world.dp_size} data-parallel groups: set parallel=fsdp (FSDP2 over the groups; "
                            f"parallel={cfg.parallel} does not compose with tensor parallelism)")


@dataclass
class Run:
    """What `fit` trains: built by `setup` (pretraining) or `llamalab.finetune.setup` (fine-tuning)."""

    cfg: TrainConfig
    world: parallel.World
    args: ModelArgs
    model: nn.Module  # the Transformer: checkpoints and exports read it
    train_model: nn.Module  # what the forward pass calls (the DDP wrapper, or the model itself)
    optimizer: torch.optim.Optimizer
    loader: Any  # next() → (inputs, targets[, {more model inputs}]); state_dict() / load_state_dict() for resume
    val_batches: Callable[[], Any] | None  # → the same held-out (inputs, targets) batches every time
    export: Callable[["Run"], dict]  # writes the final artifacts; returns summary entries
    bf16: bool = False
    accum: int = 1
    resume_from: Path | None = None
    trainable_only: bool = False  # checkpoints hold only the parameters being trained (LoRA)
    eval_at_start: bool = False  # held-out loss before the first update (a run that starts from a checkpoint)
    title: str = ""
    tokenizer: Any = None  # what the exported model carries: a tokenizer path, or a Tokenizer (a checkpoint's)
    extra_val: dict = field(default_factory=dict)  # "val_loss@N" / "val_loss/SOURCE" → more held-out batches
    refits: list = field(default_factory=list)  # [(k, n)]: from update k on, the run ends at n (optim.cosine_progress)
    autocast: Any = field(init=False)
    loss_fn: Any = field(init=False)
    loss_context: Any = field(init=False)  # what the loss and its backward run in (tensor parallelism: loss_parallel)

    def __post_init__(self):
        self.autocast = parallel.autocast(self.world.device, self.bf16, self.cfg.parallel)
        self.loss_fn = loss_function(self.cfg.compile, vocab_parallel=self.world.tp > 1)
        self.loss_context = functools.partial(vocab_parallel_loss, self.world.tp > 1)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def end(self) -> int:
        """The step the run ends at: max_steps, or its last re-fit."""
        return self.refits[-1][1] if self.refits else self.cfg.max_steps


def resume_point(cfg: TrainConfig, args: ModelArgs, resume: bool, world=None) -> Path | None:
    """The checkpoint to resume from (None: a fresh run): the newest that verifies (newer damaged ones are
    skipped with a warning). Refuses to overwrite a run or to resume another model."""
    out = Path(cfg.out_dir)
    latest = checkpoint.latest(out / "ckpt")
    if latest is not None and not resume:
        raise LlamalabError(f"{out} already holds checkpoints (latest {latest.name}); pass --resume to "
                            f"continue that run, or choose another out_dir")
    main = world is None or world.is_main
    found = checkpoint.newest_intact(out / "ckpt", warn=print if main else None) if resume else None
    if found is None:
        return None
    checkpoint.check_compatible(*found, args)
    if found[1]["step"] >= cfg.max_steps and main:  # a finished run: said plainly; only its export is redone
        print(f"nothing to train: {found[0]} is at step {found[1]['step']} and max_steps is {cfg.max_steps}; "
              f"raise max_steps to train further" + ("; exporting its weights again" if cfg.export else ""))
    return found[0]


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def setup(cfg: TrainConfig, *, resume: bool = False) -> Run:
    """A pretraining run (or continued pretraining, with `init_from`): everything the user can get wrong is
    checked before a single file is written."""
    world = init_distributed(cfg.device, cfg.tensor_parallel)
    if cfg.parallel != "none" and world.world_size == 1 and world.is_main:
        print(f"note: parallel={cfg.parallel} in a single process (launch with torchrun --nproc_per_node N to use N ranks)")
    if not cfg.data:
        raise LlamalabError("config: no `data` given; point it at a directory written by `llamalab data prepare`")
    loader = TokenLoader(cfg.data, seq_len=cfg.seq_len, batch_size=cfg.micro_batch_size, mixture=cfg.mixture,
                         seed=cfg.seed, rank=world.dp_rank, world_size=world.dp_size)
    source = None
    if cfg.init_from:  # continued pretraining: the checkpoint's model, weights and tokenizer

        source = load_source(cfg)
        args = source.args
        check_data_tokenizer(cfg.data, source)
    else:
        args = cfg.model_args()
    check_data_vocab(cfg, args, loader.vocab_size)
    check_layout(cfg, args, world)
    resume_from = resume_point(cfg, args, resume, world)

    val_batches, extra_val = held_out_sets(cfg, world, args.max_seq_len)

    torch.manual_seed(cfg.seed)
    bf16 = use_bf16(cfg, world.device)
    full_tensor = source.full_tensor if source else parallel.random_init(args, cfg.init_std,
                                                                         torch.Generator().manual_seed(cfg.seed))
    model, train_model = parallel.build_parallel_model(
        args, world=world, parallel=cfg.parallel, activation_checkpointing=cfg.activation_checkpointing,
        compile=cfg.compile, bf16=bf16, full_tensor=full_tensor, sequence_parallel=cfg.sequence_parallel)
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    title = f"{model.num_params() / 1e6:.1f}M-parameter LLaMA"
    if source:
        source.state.clear()
        title += f" from {source.path.name}"
    return Run(cfg, world, args, model, train_model, optimizer, loader, val_batches, export=export_model,
               bf16=bf16, accum=cfg.accumulation_steps(world.dp_size), resume_from=resume_from,
               eval_at_start=source is not None, title=title, extra_val=extra_val,
               tokenizer=cfg.tokenizer or (source.tokenizer if source else None))


def held_out_sets(cfg: TrainConfig, world, max_seq_len: int) -> tuple[Callable | None, dict]:
    """The held-out batches (the same windows at every evaluation) of the run's mixture at seq_len (None if
    the data has none), and the extra ones: every length of `eval_seq_lens` ("val_loss@N": what a context
    extension bought) and, with `eval_per_source`, every source alone ("val_loss/NAME": what training on one
    source does to the others)."""
    def held_out(seq_len: int, mixture):
        def batches():
            val = TokenLoader(cfg.data, seq_len=seq_len, batch_size=cfg.micro_batch_size, mixture=mixture,
                              seed=cfg.seed, rank=world.dp_rank, world_size=world.dp_size, split="val")
            return islice(val, cfg.eval_batches)
        batches()  # too little held-out text is an error now, not at the first evaluation
        return batches

    try:
        val_batches = held_out(cfg.seq_len, cfg.mixture)
    except LlamalabError as e:
        if world.is_main:
            print(f"note: no held-out loss ({e})")
        return None, {}
    extra = {}
    for n in cfg.eval_seq_lens or []:
        if n > max_seq_len:
            raise LlamalabError(f"eval_seq_lens: {n} is longer than the model's context ({max_seq_len}); raise "
                                f"model.max_seq_len (with rope scaling to extend a trained model's context)")
        extra[f"val_loss@{n}"] = held_out(n, cfg.mixture)
    if cfg.eval_per_source:
        for name, entry in read_manifest(cfg.data)[0]["sources"].items():
            if entry.get("val_tokens", 0) > cfg.seq_len:
                extra[f"val_loss/{name}"] = held_out(cfg.seq_len, {name: 1.0})
    return val_batches, extra


def check_data_vocab(cfg: TrainConfig, args: ModelArgs, data_vocab: int | None) -> None:
    """The data's token ids, and the tokenizer the export carries, fit the model's embedding."""
    if data_vocab is not None:
        check_vocab(data_vocab, args.vocab_size, fix=f"set model.vocab_size={data_vocab}",
                    what=f"the vocabulary the data in {cfg.data} was tokenized with")
    if cfg.tokenizer:
        tok_size = load_tokenizer(cfg.tokenizer).vocab_size
        if tok_size != args.vocab_size:
            raise LlamalabError(f"tokenizer {cfg.tokenizer} has {tok_size} tokens but the model has vocab_size "
                                f"{args.vocab_size}; set model.vocab_size={tok_size}")


def to_device(x: torch.Tensor, y: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs, targets, select) on `device`. Where some targets are ignored (an instruction's prompt, padding),
    `select` marks the others and the targets are theirs alone: the output layer and the loss over the
    vocabulary run only where there is something to predict."""
    keep = y != IGNORE_INDEX
    if keep.all():
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True), None
    keep = keep.to(device, non_blocking=True)
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)[keep], keep


def model_inputs(more: list, device) -> dict:
    """A batch's third part, if it has one: more keyword inputs of the model (LLaVA's `pixels`), on `device`."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in (more[0] if more else {}).items()}


def train_step(run: Run, step: int) -> dict:
    """One optimizer update (`step` counts the updates done before it): the scheduled lr, gradients
    accumulated over `accum` micro-batches — every target token of the step weighs the same, whichever
    micro-batch and rank it is on —, clipping, and AdamW (skipped when the loss or norm is not finite)."""
    cfg, world = run.cfg, run.world
    threads.adapt()
    lr = lr_at(step, peak=cfg.lr, warmup=cfg.warmup_steps_resolved, max_steps=cfg.max_steps,
               min_ratio=cfg.min_lr_ratio, refits=run.refits)
    set_lr(run.optimizer, lr)
    batches = [next(run.loader) for _ in range(run.accum)]
    counts = parallel.all_reduce_sum(torch.tensor([float(sum((b[1] != IGNORE_INDEX).sum() for b in batches)),
                                                   float(sum(b[0].numel() for b in batches))])) / world.tp
    n_targets, n_tokens = max(1.0, counts[0].item()), int(counts[1].item())
    loss_sum = torch.zeros((), device=world.device)
    for micro, (x, y, *more) in enumerate(batches):
        x, y, select = to_device(x, y, world.device)
        with parallel.no_sync(run.train_model, sync=micro == run.accum - 1):
            try:
                with run.autocast():
                    logits = run.train_model(x, select=select, **model_inputs(more, world.device))
                # DDP/FSDP average gradients over the data-parallel ranks: × dp_size makes the update the
                # global token mean (the ranks of a tensor-parallel group share one batch and one loss)
                with run.loss_context():
                    loss = run.loss_fn(logits, y) * (world.dp_size / n_targets)
                    loss.backward()
            except torch.OutOfMemoryError:
                raise LlamalabError(f"out of memory at step {step + 1} with micro_batch_size {cfg.micro_batch_size}"
                                    f" × seq_len {cfg.seq_len}; lower micro_batch_size (keep the batch with more "
                                    f"accumulation) or set activation_checkpointing=true") from None
        loss_sum += loss.detach()
    loss_val = parallel.all_reduce_mean(loss_sum).item()
    grad_norm = parallel.clip_grad_norm([p for p in run.model.parameters() if p.requires_grad], cfg.grad_clip)
    finite = torch.isfinite(torch.tensor([loss_val, grad_norm])).all().item()
    if finite:
        run.optimizer.step()
    elif cfg.nan_policy == "stop":
        raise LlamalabError(f"loss became {loss_val} (grad norm {grad_norm}) at step {step + 1}; lower lr, raise "
                            f"warmup, or set nan_policy=skip to skip such steps. Last checkpoint: "
                            f"{checkpoint.latest(run.out / 'ckpt') or 'none'}")
    elif world.is_main:
        print(f"warning: non-finite loss {loss_val} at step {step + 1}; update skipped (nan_policy=skip)")
    run.optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_val, "lr": lr, "grad_norm": grad_norm, "tokens": n_tokens, "skipped": not finite}


@torch.no_grad()
def evaluate(run: Run, batches=None) -> float:
    """Mean cross-entropy per target token over the held-out batches (all ranks together)."""
    run.model.eval()
    total = torch.zeros(2, device=run.world.device)
    for x, y, *more in (batches or run.val_batches)():
        x, y, select = to_device(x, y, run.world.device)
        with run.autocast():
            logits = run.train_model(x, select=select, **model_inputs(more, run.world.device))
        with run.loss_context():
            total += torch.stack([run.loss_fn(logits, y), (y != IGNORE_INDEX).sum().float()])
    run.model.train()
    total = parallel.all_reduce_sum(total)  # a tensor-parallel group counts its batch tp times: the ratio holds
    return (total[0] / total[1].clamp(min=1)).item()


def extra_held_out(run: Run) -> dict:
    """{"val_loss@N" / "val_loss/SOURCE": held-out loss} for the run's extra held-out sets."""
    return {key: evaluate(run, batches) for key, batches in run.extra_val.items()}


def fit(run: Run, replan: Callable[[int, float, int], int | None] | None = None) -> dict:
    """Train `run` to cfg.max_steps (resuming from run.resume_from if set); returns a summary dict. `replan(step,
    seconds since the first step, current end)`, called after every step (on every rank: it must answer alike),
    may end the run at another step: a re-fit, from then on in `run.refits` and the learning-rate schedule
    (`llamalab demo` fits its run to a time budget)."""
    cfg, world = run.cfg, run.world
    if run.resume_from is not None and not cfg.export:  # a finished run with nothing to export: touch nothing
        done = checkpoint.read_meta(run.resume_from)["step"]
        if done >= cfg.max_steps:
            return {"step": done, "out_dir": str(run.out)}
    step, tokens_seen, log = begin(run)

    def save_checkpoint(at: int):
        checkpoint.save(run.out / "ckpt", at, model=run.model, optimizer=run.optimizer,
                        loader_state={"data": run.loader.state_dict(), "tokens": tokens_seen},
                        model_args=run.args, config=cfg.to_dict(), world=world, keep_last=cfg.keep_last,
                        trainable_only=run.trainable_only)

    bar = None
    if world.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=run.end, initial=step, desc="train", unit="step", dynamic_ncols=True)
    peak, _ = peak_flops(world.device, torch.bfloat16 if run.bf16 else torch.float32)
    t_start = time.perf_counter()
    last = {}
    run.model.train()
    while step < run.end:
        t0 = time.perf_counter()
        result = train_step(run, step)
        step += 1
        new_end = replan(step, time.perf_counter() - t_start, run.end) if replan else None
        if new_end is not None and new_end != run.end:
            run.refits.append((step, max(step, new_end)))
            if bar is not None:
                bar.total = run.end
        tokens_seen += result["tokens"]
        tok_s = result["tokens"] / (time.perf_counter() - t0)
        record = {"step": step, "loss": result["loss"], "lr": result["lr"], "grad_norm": result["grad_norm"],
                  "tokens": tokens_seen, "tokens_per_s": tok_s, "mfu": mfu(run.args, cfg.seq_len, tok_s / world.world_size, peak),
                  "elapsed_s": time.perf_counter() - t_start}
        if result["skipped"]:
            record["skipped"] = True
        if run.val_batches is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == run.end):
            record["val_loss"] = evaluate(run)
            record.update(extra_held_out(run))
        last = record
        if world.is_main:
            if step % cfg.log_every == 0 or "val_loss" in record or step == run.end:
                log.write(record)
            if bar is not None:
                bar.set_postfix_str(f"loss {record['loss']:.3f} lr {record['lr']:.2e} {tok_s:,.0f} tok/s"
                                    + (f" val {record['val_loss']:.3f}" if "val_loss" in record else ""), refresh=False)
                bar.update(1)
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == run.end:
            save_checkpoint(step)
    if bar is not None:
        bar.close()
    return finish(run, log, step, tokens_seen, last)


def begin(run: Run) -> tuple[int, int, MetricsLog]:
    """(step, tokens seen, metrics log) to start from: a fresh run, or the state of run.resume_from; a run that
    starts from a checkpoint gets its held-out loss before any update (step 0)."""
    cfg, world, out = run.cfg, run.world, run.out
    step, tokens_seen = 0, 0
    log = MetricsLog(out / "metrics.jsonl")
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_partial(out / "ckpt")
    world.barrier()
    if run.resume_from is not None:
        state = checkpoint.load(run.resume_from, model=run.model, optimizer=run.optimizer, world=world,
                                trainable_only=run.trainable_only)
        step, tokens_seen = state["step"], state["loader"]["tokens"]
        run.loader.load_state_dict(state["loader"]["data"])
        if world.is_main:
            log.truncate_after(step)
            print(f"resumed from {run.resume_from} (step {step})")
    elif world.is_main:
        log.truncate_after(-1)
    if world.is_main:
        (out / "config.json").write_text(json.dumps({"train": cfg.to_dict(), "model_args": run.args.to_dict()}, indent=2))
        layout = f"parallel={cfg.parallel}" + (f", tensor_parallel={world.tp}" if world.tp > 1 else "") + (
            " + sequence_parallel" if cfg.sequence_parallel else "")
        print(f"model: {run.model.num_params():,} parameters; {world.world_size} rank(s) on {world.device.type}, "
              f"{layout}, {'bf16 autocast' if run.bf16 else 'fp32'}; batch {cfg.micro_batch_size} × "
              f"{world.dp_size} data-parallel rank(s) × {run.accum} accumulation of ≤{cfg.seq_len} tokens; "
              f"{cfg.max_steps} steps, warmup {cfg.warmup_steps_resolved}")
    if run.eval_at_start and run.val_batches is not None and step == 0:
        first = {"step": 0, "val_loss": evaluate(run), **extra_held_out(run), "tokens": 0}
        if world.is_main:
            log.write(first)
            print(f"held-out loss before training: {first['val_loss']:.4f}"
                  + "".join(f", {k.removeprefix('val_loss')}: {v:.4f}" for k, v in first.items() if k in run.extra_val))
    return step, tokens_seen, log


def finish(run: Run, log: MetricsLog, step: int, tokens_seen: int, last: dict) -> dict:
    """The summary (losses before and after, throughput, paths), the loss curve and the export."""
    out = run.out
    summary = {"step": step, "refits": list(run.refits), "loss": last.get("loss"), "val_loss": last.get("val_loss"), "out_dir": str(out),
               "params": run.model.num_params(), "tokens": tokens_seen, "tokens_per_step": tokens_seen // max(1, step),
               "peak_flops": peak_flops(run.world.device, torch.bfloat16 if run.bf16 else torch.float32)[1]}
    if run.world.is_main:
        records = log.read()
        plot_loss(records, out / "loss.png", title=run.title)
        summary["loss_png"] = str(out / "loss.png")
        speeds = sorted(r["tokens_per_s"] for r in records if "tokens_per_s" in r)
        summary["tokens_per_s"] = speeds[len(speeds) // 2] if speeds else None  # median
        before = next((r for r in records if r.get("step") == 0 and "val_loss" in r), {})
        summary["val_loss_before"] = before.get("val_loss")
        summary["held_out"] = {k.removeprefix("val_loss"): {"before": before.get(k), "after": last.get(k)}
                               for k in run.extra_val}
    if run.cfg.export:
        summary.update(run.export(run))
    run.world.barrier()
    return summary


def export_model(run: Run) -> dict:
    """The final weights as a HF directory (loadable with `llamalab.load`) with the run's tokenizer; all ranks
    gather, rank 0 writes."""
    state = parallel.full_state_dict(run.model)
    out = run.out / "model"
    if run.world.is_main:
        tokenizer = Path(run.tokenizer) if isinstance(run.tokenizer, str) else run.tokenizer
        save({k: v.float() for k, v in state.items()}, run.args, out, "hf", tokenizer, force=True)  # a resumed run re-exports
    return {"model_dir": str(out)}


def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    """Run (or resume) a pretraining run; returns a summary dict (final losses, paths, throughput)."""
    return fit(setup(cfg, resume=resume))
