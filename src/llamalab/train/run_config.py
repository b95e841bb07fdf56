"""`TrainConfig`: every knob of a pretraining run, loaded from YAML or TOML, overridable key by key.

Defaults are the paper's recipe (§2.2–2.4): AdamW β=(0.9, 0.95), weight decay 0.1, gradient clipping
1.0, 2000 warmup steps, cosine decay to 10% of the peak learning rate. This module imports no torch, so
the CLI can build its `--key value` options instantly.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..atomic import check_apart
from ..config import ModelArgs, get_preset
from ..errors import LlamalabError


@dataclass
class TrainConfig:
    # model: a preset name, or a mapping of ModelArgs fields (optionally with `preset` as the base); default tiny.
    # With init_from, the model is the checkpoint's and `model` may only change SAFE_OVERRIDES.
    model: Any = None
    tokenizer: str | None = None  # tokenizer file/dir: checked against vocab_size, copied into the export
    # data: a directory (or manifest) written by `llamalab data prepare`
    data: str = ""
    mixture: dict | None = None  # source → sampling weight; None = the data's own proportions
    init_from: str | None = None  # start from this checkpoint (anything `llamalab.load` reads) instead of random
    seq_len: int = 256
    micro_batch_size: int = 8
    batch_tokens: int | None = None  # global batch in tokens; None = micro_batch_size·seq_len·world_size
    # optimizer and schedule
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 2000
    warmup_fraction: float | None = None  # if set, warmup = round(fraction · max_steps) (tiny runs)
    max_steps: int = 10000
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    init_std: float = 0.02
    # systems
    dtype: str = "auto"  # auto (bf16 autocast where supported, else fp32) | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    activation_checkpointing: bool = False
    compile: bool = False
    parallel: str = "none"  # none | ddp | fsdp (launch with torchrun for ddp/fsdp)
    tensor_parallel: int = 1  # ranks sharing one copy of the model, split by heads (§2.4); × parallel=fsdp for more
    sequence_parallel: bool = False  # with tensor_parallel: norms and residual stream split along the sequence
    # bookkeeping
    eval_every: int = 0  # held-out loss every N steps (0 = only at the end)
    eval_batches: int = 8
    eval_seq_lens: list | None = None  # also held-out loss at these lengths (what a context extension bought)
    eval_per_source: bool = False  # also held-out loss of every source alone (e.g. forgetting the others)
    ckpt_every: int = 0  # 0 = only at the end
    keep_last: int = 3
    log_every: int = 1
    out_dir: str = "runs/train"
    seed: int = 0
    nan_policy: str = "stop"  # stop | skip
    export: bool = True  # write the final model as a HF directory into <out_dir>/model
    progress: bool = True  # tqdm progress bar

    FLOAT_KEYS: ClassVar[tuple] = ("lr", "min_lr_ratio", "warmup_fraction", "weight_decay", "eps", "grad_clip",
                                   "init_std")
    STR_KEYS: ClassVar[set] = {"tokenizer", "init_from", "data", "out_dir", "dtype", "device", "parallel",
                               "nan_policy"}
    POSITIVE: ClassVar[tuple] = ("lr", "eps", "init_std", "grad_clip")  # numbers > 0 (None: not set)
    NONNEGATIVE: ClassVar[tuple] = ("weight_decay", "warmup_fraction")  # numbers >= 0
    INT_KEYS: ClassVar[tuple] = ("warmup_steps", "eval_every", "ckpt_every", "batch_tokens")  # integers >= 0

    def numbers(self) -> None:
        """The number keys as numbers (YAML reads 3e-4, without a dot, as a string), each finite and in its
        range: one `config: ...` error otherwise (nan, inf, a negative rate or count)."""
        def bad(msg):
            raise LlamalabError(f"config: {msg}")
        for k in self.FLOAT_KEYS:
            v = getattr(self, k)
            if v is not None and not isinstance(v, bool):
                try:
                    setattr(self, k, float(v))
                except (TypeError, ValueError, OverflowError):
                    bad(f"{k} must be a number, got {v!r}")
                if not math.isfinite(getattr(self, k)):
                    bad(f"{k} must be a finite number, got {v!r}")
        for k in self.POSITIVE + self.NONNEGATIVE:
            v = getattr(self, k)
            if v is not None and (v <= 0 if k in self.POSITIVE else v < 0):
                bad(f"{k} must be {'>' if k in self.POSITIVE else '>='} 0, got {v!r}")
        for k in self.INT_KEYS:
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                bad(f"{k} must be a non-negative integer, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            bad(f"seed must be an integer in [0, 2**63), got {self.seed!r}")

    def __post_init__(self):
        def bad(msg):
            raise LlamalabError(f"config: {msg}")
        self.numbers()
        for k in ("seq_len", "micro_batch_size", "max_steps", "eval_batches", "keep_last", "log_every"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                bad(f"{k} must be a positive integer, got {getattr(self, k)!r}")
        if self.eval_seq_lens is not None and (not isinstance(self.eval_seq_lens, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in self.eval_seq_lens)):
            bad(f"eval_seq_lens must be a list of positive integers such as [2048, 4096], got {self.eval_seq_lens!r}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            bad(f"dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        if self.parallel not in ("none", "ddp", "fsdp"):
            bad(f"parallel must be none, ddp or fsdp, got {self.parallel!r}")
        if not isinstance(self.tensor_parallel, int) or isinstance(self.tensor_parallel, bool) or self.tensor_parallel < 1:
            bad(f"tensor_parallel must be a positive integer, got {self.tensor_parallel!r}")
        if self.sequence_parallel not in (True, False):
            bad(f"sequence_parallel must be true or false, got {self.sequence_parallel!r}")
        if self.sequence_parallel and self.tensor_parallel == 1:
            bad("sequence_parallel splits the sequence over the tensor-parallel ranks: set tensor_parallel > 1 too")
        if self.nan_policy not in ("stop", "skip"):
            bad(f"nan_policy must be stop or skip, got {self.nan_policy!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            bad(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps_resolved >= self.max_steps:
            bad(f"warmup ({self.warmup_steps_resolved} steps) must be shorter than max_steps ({self.max_steps}); "
                f"lower warmup_steps or set warmup_fraction (e.g. 0.05) for short runs")
        self.betas = tuple(float(b) for b in self.betas)
        check_apart(self.out_dir, [self.data, self.init_from, self.tokenizer], "output directory")
        self.model_args()  # validate the model description early

    @property
    def warmup_steps_resolved(self) -> int:
        if self.warmup_fraction is not None:
            return max(1, round(self.warmup_fraction * self.max_steps))
        return self.warmup_steps

    def model_overrides(self) -> dict:
        """With init_from: the ModelArgs fields `model` changes (only SAFE_OVERRIDES may be changed)."""
        if self.model is None:
            return {}
        if not isinstance(self.model, dict):
            raise LlamalabError(f"config: with init_from the model is the checkpoint's; `model` may only be a mapping "
                                f"of {', '.join(SAFE_OVERRIDES)}, not {self.model!r}")
        bad = sorted(set(self.model) - set(SAFE_OVERRIDES))
        if bad:
            raise LlamalabError(f"config: model.{bad[0]} cannot change when starting from a checkpoint (init_from): "
                                f"it would change the shapes of the checkpoint's weights; only "
                                f"{', '.join(SAFE_OVERRIDES)} can")
        return dict(self.model)

    def model_args(self) -> ModelArgs:
        """The model of a run from random weights (with init_from, see train.init_from.source_args)."""
        if self.init_from:
            self.model_overrides()
            return ModelArgs()  # placeholder, never built: the checkpoint's config replaces it
        if self.model is None:
            return get_preset(DEFAULT_PRESET).replace(max_seq_len=max(get_preset(DEFAULT_PRESET).max_seq_len, self.seq_len))
        if isinstance(self.model, str):
            return get_preset(self.model).replace(max_seq_len=max(get_preset(self.model).max_seq_len, self.seq_len))
        if not isinstance(self.model, dict):
            raise LlamalabError(f"config: model must be a preset name or a mapping of ModelArgs fields, got {self.model!r}")
        fields = dict(self.model)
        base = get_preset(fields.pop("preset")).to_dict() if "preset" in fields else {}
        args = ModelArgs.from_dict({**base, **fields})
        return args.replace(max_seq_len=max(args.max_seq_len, self.seq_len))

    def accumulation_steps(self, world_size: int) -> int:
        per_step = self.micro_batch_size * self.seq_len * world_size
        if self.batch_tokens is None:
            return 1
        if self.batch_tokens % per_step:
            raise LlamalabError(
                f"config: batch_tokens {self.batch_tokens} is not a multiple of micro_batch_size·seq_len·world_size "
                f"= {self.micro_batch_size}·{self.seq_len}·{world_size} = {per_step}; change batch_tokens or micro_batch_size")
        return self.batch_tokens // per_step

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = sorted(set(d) - set(cls.keys()))
        if unknown:
            raise LlamalabError(f"unknown config key(s) {unknown}; valid keys: {', '.join(cls.keys())}")
        return cls(**d)


def read_config_file(path: str | Path) -> dict:
    """The mapping in a YAML (.yaml/.yml) or TOML (.toml) file."""
    path = Path(path)
    if not path.is_file():
        raise LlamalabError(f"config file {path} not found")
    text = path.read_text()
    try:
        d = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise LlamalabError(f"cannot parse {path}: {e}".splitlines()[0]) from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise LlamalabError(f"{path} must hold a mapping of config keys, got {type(d).__name__}")
    return d


def parse_value(text: str) -> Any:
    """A command-line value, read as YAML: 3e-4 → float, true → bool, [0.9, 0.95] → list, else str."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(d: dict, overrides: list[tuple[str, str]], cls=None) -> dict:
    """Set `key` (or `model.field`) to each parsed value; unknown keys are an error listing the valid ones.
    `model.<field>` overrides apply after the others (whether init_from is set decides what they mean)."""
    cls = cls or TrainConfig
    d = dict(d)
    valid = cls.keys()
    overrides = sorted(overrides, key=lambda kv: kv[0].startswith("model."))
    for key, text in overrides:
        key = key.replace("-", "_")
        top, _, sub = key.partition(".")
        if top not in valid or (sub and top != "model" and top != "mixture"):
            raise LlamalabError(f"unknown config key {key!r}; valid keys: {', '.join(valid)} (and model.<field>)")
        value = parse_value(text)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and top in cls.STR_KEYS:
            value = text  # e.g. `--out_dir 1` stays a path
        if not sub:
            d[top] = value
            continue
        current = d.get(top)
        if top == "model" and not isinstance(current, dict):
            current = {"preset": current or DEFAULT_PRESET} if d.get("init_from") is None else {}
        d[top] = {**(current or {}), sub: value}
    return d


DEFAULT_PRESET = "tiny"
SAFE_OVERRIDES = ("rope_theta", "rope_scaling", "max_seq_len")  # what init_from runs may change in the model


def load_config(path: str | Path | None = None, overrides: list[tuple[str, str]] = (), cls=None) -> TrainConfig:
    cls = cls or TrainConfig
    d = read_config_file(path) if path else {}
    return cls.from_dict(apply_overrides(d, list(overrides), cls))
