"""`FinetuneConfig`: a TrainConfig (the same loop, checkpoints, parallelism) plus instruction data, LoRA,
QLoRA and LLaMA-Adapter, with fine-tuning's defaults: Stanford Alpaca's recipe (3 epochs, cosine to zero, 3%
warm-up, no weight decay, lr 2e-5 for full fine-tuning), QLoRA's lr 2e-4 for LoRA adapters and the
LLaMA-Adapter paper's lr 9e-3, prompt length 10 and share of adapted layers (top 30 of 32). Imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from ..errors import LlamalabError
from ..train.run_config import TrainConfig

QUANTIZE = ("nf4", "int8")
METHODS = ("full", "lora", "llama-adapter")
ADAPTER_LR = 9e-3  # LLaMA-Adapter (Zhang et al. 2023), §4.1
NOT_FOR_FINETUNING = ("tokenizer", "mixture", "batch_tokens", "init_std", "eval_seq_lens", "eval_batches",
                      "eval_per_source")  # the validation split is evaluated whole


@dataclass
class FinetuneConfig(TrainConfig):
    init_from: str | None = None  # the checkpoint to fine-tune (`llamalab finetune --model`)
    data: str = ""  # a JSON / JSONL file of instruction records
    format: str = "auto"  # auto | alpaca | sharegpt | messages | completion
    template: str | None = None  # chat template: the checkpoint's own, or alpaca | llama-2 | chatml | a Jinja file
    val_split: float = 0.05  # fraction of the records held out for the validation loss and sample answers
    epochs: float = 3.0  # sets max_steps when max_steps is 0
    seq_len: int | None = None  # longer examples are cut (and counted); None: min(1024, the model's context)
    micro_batch_size: int = 4
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float | None = None  # None: 2e-4 with LoRA, 2e-5 for full fine-tuning, 1e-3 for LLaVA stage 1 (LLaVA: 2e-3)
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    warmup_fraction: float | None = 0.03
    max_steps: int = 0  # 0: epochs × examples / batch
    weight_decay: float = 0.0
    lora_rank: int | None = None  # None: full fine-tuning
    lora_alpha: float | None = None  # None: 2 × rank
    lora_dropout: float = 0.05
    lora_targets: str = "q,k,v,o"  # q,k,v,o,w1,w2,w3 (or gate,down,up) or all
    quantize_base: str | None = None  # nf4 (QLoRA) | int8: the frozen base in low precision (needs LoRA)
    method: str | None = None  # full | lora | llama-adapter; None: lora with lora_rank, else full
    adapter_len: int | None = None  # llama-adapter: prompt length L (None: the paper's 10)
    adapter_layers: int | None = None  # llama-adapter: top K layers adapted (None: the paper's 30/32 of them)
    samples: int = 2  # held-out instructions answered before and after training, in the report
    stage: int | None = None  # LLaVA: 1 trains the projector (tower and LM frozen), 2 projector + LM (full or LoRA)
    image_dir: str | None = None  # LLaVA: where the records' image paths start (default: the data file's folder)
    train_vision_tower: bool = False  # LLaVA: the vision tower trains too (a tower trained from scratch)
    out_dir: str = "runs/finetune"

    FLOAT_KEYS: ClassVar[tuple] = TrainConfig.FLOAT_KEYS + ("val_split", "epochs", "lora_alpha", "lora_dropout")
    STR_KEYS: ClassVar[set] = TrainConfig.STR_KEYS | {"format", "template", "lora_targets", "quantize_base",
                                               "method", "image_dir"}

    POSITIVE: ClassVar[tuple] = TrainConfig.POSITIVE + ("epochs", "lora_alpha")
    NONNEGATIVE: ClassVar[tuple] = TrainConfig.NONNEGATIVE + ("val_split", "lora_dropout")

    def __post_init__(self):
        self.numbers()  # before anything below compares them
        if not 0 <= self.val_split < 1:
            raise LlamalabError(f"config: val_split must be in [0, 1), got {self.val_split}")
        if not self.init_from:
            raise LlamalabError("config: fine-tuning needs a model to start from (--model CHECKPOINT)")
        if not self.data:
            raise LlamalabError("config: no instruction data given (--data FILE.json or .jsonl)")
        self._check_method()
        if self.lr is None:
            self.lr = (ADAPTER_LR if self.method == "llama-adapter" else 1e-3 if self.stage == 1
                       else 2e-4 if self.lora_rank is not None else 2e-5)
        if self.batch_tokens is not None:
            raise LlamalabError("config: fine-tuning batches are counted in examples: use micro_batch_size and "
                                "grad_accum, not batch_tokens")
        for key in ("tokenizer", "mixture", "eval_seq_lens"):
            if getattr(self, key) is not None:
                raise LlamalabError(f"config: {key} does not apply to fine-tuning (the checkpoint brings its "
                                    f"tokenizer; the data is one instruction file)")
        if not isinstance(self.grad_accum, int) or self.grad_accum < 1:
            raise LlamalabError(f"config: grad_accum must be a positive integer, got {self.grad_accum!r}")
        if self.quantize_base not in (None, *QUANTIZE):
            raise LlamalabError(f"config: quantize_base must be one of {', '.join(QUANTIZE)}, got {self.quantize_base!r}")
        if self.quantize_base and self.lora_rank is None:
            raise LlamalabError(f"config: quantize_base={self.quantize_base} freezes the base in low precision, so "
                                f"it needs LoRA adapters to train: add --lora-rank R")
        if self.quantize_base and self.parallel == "fsdp":
            raise LlamalabError("config: a quantized base with parallel=fsdp is not supported; use parallel=ddp")
        if not isinstance(self.samples, int) or self.samples < 0:
            raise LlamalabError(f"config: samples must be a non-negative integer, got {self.samples!r}")
        if self.max_steps == 0 and not self.epochs > 0:
            raise LlamalabError(f"config: epochs must be positive, got {self.epochs}")
        self.lora_spec()
        self._check_stage()
        if self.max_steps == 0 or self.seq_len is None:  # resolved once model and data are read; check the rest
            dataclasses.replace(self, max_steps=self.max_steps or 10**9, seq_len=self.seq_len or 1024)
            return
        super().__post_init__()

    def _check_method(self) -> None:
        """--method against the flags of the other methods; resolves None to lora or full."""
        if self.method not in (None, *METHODS):
            raise LlamalabError(f"config: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method is None:
            self.method = "lora" if self.lora_rank is not None else "full"
        if self.method == "lora" and self.lora_rank is None:
            raise LlamalabError("config: method=lora needs a rank: add --lora-rank R")
        if self.method != "lora" and self.lora_rank is not None:
            raise LlamalabError(f"config: --lora-rank is a LoRA setting but method={self.method}: drop it, or "
                                f"use --method lora")
        if self.method != "llama-adapter":
            given = [k for k in ("adapter_len", "adapter_layers") if getattr(self, k) is not None]
            if given:
                raise LlamalabError(f"config: {given[0]} is a LLaMA-Adapter setting but method={self.method}: add "
                                    f"--method llama-adapter, or drop it")
            return
        if self.quantize_base:
            raise LlamalabError(f"config: quantize_base={self.quantize_base} is for LoRA (QLoRA); LLaMA-Adapter "
                                f"trains on the base as it is: drop --quantize-base")
        for key in ("adapter_len", "adapter_layers"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise LlamalabError(f"config: {key} must be a positive integer, got {value!r}")

    def with_adapter(self, n_layers: int) -> "FinetuneConfig":
        """adapter_len and adapter_layers resolved (the paper's 10 and 30/32 of `n_layers`) and checked against a
        model of `n_layers` layers; unchanged for the other methods."""
        if self.method != "llama-adapter":
            return self
        from ..formats.adaption_prompt import PAPER_LENGTH, default_layers

        layers = self.adapter_layers or default_layers(n_layers)
        if layers > n_layers:
            raise LlamalabError(f"config: adapter_layers={layers} but {self.init_from} has {n_layers} layers: adapt "
                                f"at most {n_layers}")
        return dataclasses.replace(self, adapter_len=self.adapter_len or PAPER_LENGTH, adapter_layers=layers)
    def _check_stage(self) -> None:
        if self.stage not in (None, 1, 2):
            raise LlamalabError(f"config: stage must be 1 (LLaVA's projector alignment) or 2 (projector + language "
                                f"model), got {self.stage!r}")
        if self.train_vision_tower not in (True, False):
            raise LlamalabError(f"config: train_vision_tower must be true or false, got {self.train_vision_tower!r}")
        if self.stage is None and (self.image_dir or self.train_vision_tower):
            raise LlamalabError("config: image_dir and train_vision_tower are for LLaVA's stages: add --stage 1 or 2")
        if self.stage == 1 and self.lora_rank is not None:
            raise LlamalabError("config: stage 1 trains the projector alone (the language model frozen); LoRA on "
                                "the language model is stage 2: drop --lora-rank or use --stage 2")
        if self.stage is not None and self.quantize_base:
            raise LlamalabError("config: quantize_base is not supported with LLaVA's stages")
        if self.stage is not None and self.method == "llama-adapter":
            raise LlamalabError("config: LLaVA's stages train the projector (stage 1) or projector + language model "
                                "(stage 2), not a LLaMA-Adapter: drop --method llama-adapter or --stage")

    def lora_spec(self):
        """The LoRA settings (a LoraSpec), or None for full fine-tuning."""
        if self.lora_rank is None:
            return None
        from ..formats.lora import LoraSpec, parse_targets

        rank = self.lora_rank
        alpha = self.lora_alpha if self.lora_alpha is not None else (2.0 * rank if isinstance(rank, int) else 1.0)
        return LoraSpec(rank=self.lora_rank, alpha=alpha, dropout=self.lora_dropout,
                        targets=parse_targets(self.lora_targets))

    def with_context(self, max_seq_len: int) -> "FinetuneConfig":
        """seq_len, when not given, from the model's context."""
        return self if self.seq_len else dataclasses.replace(self, seq_len=min(1024, max_seq_len))

    def with_steps(self, train_examples: int, world_size: int) -> "FinetuneConfig":
        """max_steps from `epochs` once the number of training examples is known."""
        if self.max_steps:
            return self
        per_step = self.micro_batch_size * self.grad_accum * world_size
        return dataclasses.replace(self, max_steps=max(1, math.ceil(self.epochs * train_examples / per_step)))

    def accumulation_steps(self, world_size: int) -> int:
        return self.grad_accum
