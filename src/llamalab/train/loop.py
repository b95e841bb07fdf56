"""The pretraining loop, nanoGPT style: read it top to bottom.

    config → process group → data → model (meta → parallelisms → init) → AdamW → resume?
    for each step: lr ← schedule; accumulate gradients over micro-batches; clip; update;
                   log; held-out loss; checkpoint
    → final checkpoint, loss curve, HF export
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import LlamalabError
from ..tokenizer import check_vocab, load_tokenizer
from . import checkpoint
from .metrics import MetricsLog, mfu, peak_flops, plot_loss
from .optim import build_optimizer, lr_at, set_lr
from .parallel import all_reduce_mean, build_parallel_model, init_distributed
from .run_config import TrainConfig


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next-token predictions, in fp32 (bf16 logits are upcast first)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def loss_function(compile: bool):
    """`next_token_loss`, compiled with `compile: true` (the blocks are compiled in build_parallel_model), so
    the upcast, log-softmax and its backward over the (tokens × vocab) logits run as fused loops."""
    return torch.compile(next_token_loss, fullgraph=True) if compile else next_token_loss


def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    """Run (or resume) a pretraining run; returns a summary dict (final losses, paths, throughput)."""
    world = init_distributed(cfg.device)
    args = cfg.model_args()
    out = Path(cfg.out_dir)
    ckpt_dir = out / "ckpt"
    bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and world.device.type == "cuda" and torch.cuda.is_bf16_supported())
    accum = cfg.accumulation_steps(world.world_size)
    if cfg.parallel != "none" and world.world_size == 1 and world.is_main:
        print(f"note: parallel={cfg.parallel} in a single process (launch with torchrun --nproc_per_node N to use N ranks)")

    # --- everything the user can get wrong is checked before a single file is written ---
    from ..data.loader import TokenLoader

    if not cfg.data:
        raise LlamalabError("config: no `data` given; point it at a directory written by `llamalab data prepare`")
    loader = TokenLoader(cfg.data, seq_len=cfg.seq_len, batch_size=cfg.micro_batch_size, mixture=cfg.mixture,
                         seed=cfg.seed, rank=world.rank, world_size=world.world_size)
    if loader.vocab_size is not None:
        check_vocab(loader.vocab_size, args.vocab_size, fix=f"set model.vocab_size={loader.vocab_size}",
                    what=f"the vocabulary the data in {cfg.data} was tokenized with")
    if cfg.tokenizer:
        tok_size = load_tokenizer(cfg.tokenizer).vocab_size
        if tok_size != args.vocab_size:
            raise LlamalabError(f"tokenizer {cfg.tokenizer} has {tok_size} tokens but the model has vocab_size "
                                f"{args.vocab_size}; set model.vocab_size={tok_size}")
    resume_from = checkpoint.latest(ckpt_dir)
    if resume_from is not None and not resume:
        raise LlamalabError(f"{out} already holds checkpoints (latest {resume_from.name}); pass --resume to "
                            f"continue that run, or choose another out_dir")
    if resume_from is not None:
        checkpoint.check_compatible(resume_from, args)

    # --- model and optimizer ---
    torch.manual_seed(cfg.seed)
    model, train_model = build_parallel_model(args, world=world, parallel=cfg.parallel,
                                              activation_checkpointing=cfg.activation_checkpointing,
                                              compile=cfg.compile, bf16=bf16, std=cfg.init_std, seed=cfg.seed)
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    n_params = model.num_params()  # FSDP2 shards are DTensors: numel() is the global size
    warmup = cfg.warmup_steps_resolved
    tokens_per_step = cfg.micro_batch_size * cfg.seq_len * world.world_size * accum
    peak, peak_desc = peak_flops(world.device)
    loss_fn = loss_function(cfg.compile)
    autocast = (torch.autocast(world.device.type, dtype=torch.bfloat16) if bf16 and cfg.parallel != "fsdp"
                else contextlib.nullcontext())  # FSDP2 casts through its MixedPrecisionPolicy instead

    step = 0
    log = MetricsLog(out / "metrics.jsonl")
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_partial(ckpt_dir)
    world.barrier()
    if resume_from is not None:
        state = checkpoint.load(resume_from, model=model, optimizer=optimizer, world=world)
        step = state["step"]
        loader.load_state_dict(state["loader"])
        if world.is_main:
            log.truncate_after(step)
            print(f"resumed from {resume_from} (step {step})")
    elif world.is_main:
        log.truncate_after(-1)
    if world.is_main:
        (out / "config.json").write_text(json.dumps({"train": cfg.to_dict(), "model_args": args.to_dict()}, indent=2))
        print(f"model: {n_params:,} parameters; {world.world_size} rank(s) on {world.device.type}, parallel={cfg.parallel}, "
              f"{'bf16 autocast' if bf16 else 'fp32'}; batch {tokens_per_step:,} tokens "
              f"({cfg.micro_batch_size}×{cfg.seq_len} × {world.world_size} rank(s) × {accum} accumulation); "
              f"{cfg.max_steps} steps, warmup {warmup}")

    def save_checkpoint(at: int):
        checkpoint.save(ckpt_dir, at, model=model, optimizer=optimizer, loader_state=loader.state_dict(),
                        model_args=args, config=cfg.to_dict(), world=world, keep_last=cfg.keep_last)

    def val_loader():  # the same held-out windows at every evaluation
        return TokenLoader(cfg.data, seq_len=cfg.seq_len, batch_size=cfg.micro_batch_size, mixture=cfg.mixture,
                           seed=cfg.seed, rank=world.rank, world_size=world.world_size, split="val")

    def evaluate() -> float:
        val = val_loader()
        model.eval()
        total = torch.zeros((), device=world.device)
        with torch.no_grad():
            for _ in range(cfg.eval_batches):
                x, y = (t.to(world.device) for t in next(val))
                with autocast:
                    logits = train_model(x)
                total += loss_fn(logits, y)
        model.train()
        return all_reduce_mean(total / cfg.eval_batches).item()

    try:
        val_loader()
        has_val = True
    except LlamalabError as e:
        has_val = False
        if world.is_main:
            print(f"note: no held-out loss ({e})")
    bar = None
    if world.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    hang_after = int(os.environ.get("LLAMALAB_TEST_HANG_AFTER_CHECKPOINT", "-1"))  # test hook (SIGKILL tests)
    t_start = time.perf_counter()
    last = {}
    model.train()
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, peak=cfg.lr, warmup=warmup, max_steps=cfg.max_steps, min_ratio=cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        loss_sum = torch.zeros((), device=world.device)
        for micro in range(accum):
            x, y = (t.to(world.device, non_blocking=True) for t in next(loader))
            # DDP: all-reduce gradients only on the last micro-batch
            sync = contextlib.nullcontext() if micro == accum - 1 or train_model is model else train_model.no_sync()
            with sync:
                try:
                    with autocast:
                        logits = train_model(x)
                    loss = loss_fn(logits, y) / accum
                    loss.backward()
                except torch.OutOfMemoryError:
                    raise LlamalabError(f"out of memory at step {step + 1} with micro_batch_size {cfg.micro_batch_size}"
                                        f" × seq_len {cfg.seq_len}; lower micro_batch_size (batch_tokens is kept by more "
                                        f"accumulation) or set activation_checkpointing=true") from None
            loss_sum += loss.detach()
        loss_val = all_reduce_mean(loss_sum).item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        grad_norm = grad_norm.item()
        step += 1
        finite = torch.isfinite(torch.tensor([loss_val, grad_norm])).all().item()
        if finite:
            optimizer.step()
        elif cfg.nan_policy == "stop":
            raise LlamalabError(f"loss became {loss_val} (grad norm {grad_norm}) at step {step}; lower lr, raise "
                                f"warmup, or set nan_policy=skip to skip such steps. Last checkpoint: "
                                f"{checkpoint.latest(ckpt_dir) or 'none'}")
        elif world.is_main:
            print(f"warning: non-finite loss {loss_val} at step {step}; update skipped (nan_policy=skip)")
        optimizer.zero_grad(set_to_none=True)

        dt = time.perf_counter() - t0
        tok_s = tokens_per_step / dt
        record = {"step": step, "loss": loss_val, "lr": lr, "grad_norm": grad_norm, "tokens": step * tokens_per_step,
                  "tokens_per_s": tok_s, "mfu": mfu(n_params, tok_s, peak), "elapsed_s": time.perf_counter() - t_start}
        if not finite:
            record["skipped"] = True
        if has_val and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps):
            record["val_loss"] = evaluate()
        last = record
        if world.is_main:
            if step % cfg.log_every == 0 or "val_loss" in record or step == cfg.max_steps:
                log.write(record)
            if bar is not None:
                bar.set_postfix_str(f"loss {loss_val:.3f} lr {lr:.2e} {tok_s:,.0f} tok/s"
                                    + (f" val {record['val_loss']:.3f}" if "val_loss" in record else ""), refresh=False)
                bar.update(1)
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.max_steps:
            save_checkpoint(step)
            if step == hang_after:
                signal.pause()  # wait to be killed
    if bar is not None:
        bar.close()

    summary = {"step": step, "loss": last.get("loss"), "val_loss": last.get("val_loss"), "out_dir": str(out),
               "params": n_params, "tokens_per_step": tokens_per_step, "peak_flops": peak_desc}
    if world.is_main:
        records = log.read()
        plot_loss(records, out / "loss.png", title=f"{n_params / 1e6:.1f}M-parameter LLaMA")
        summary["loss_png"] = str(out / "loss.png")
        speeds = sorted(r["tokens_per_s"] for r in records if "tokens_per_s" in r)
        summary["tokens_per_s"] = speeds[len(speeds) // 2] if speeds else None  # median
    if cfg.export:
        summary["model_dir"] = str(export(model, args, out / "model", cfg.tokenizer, world))
    world.barrier()
    return summary


def export(model, args, out: Path, tokenizer, world) -> Path:
    """The final weights as a HF directory (loadable with `llamalab.load`); all ranks gather, rank 0 writes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if world.is_main:
        from ..formats import save

        state = {k.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", ""): v.float()
                 for k, v in state.items()}
        save(state, args, out, "hf", Path(tokenizer) if tokenizer else None, force=True)  # a resumed run re-exports
    return out

