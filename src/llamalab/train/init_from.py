"""Starting a run from a released checkpoint instead of random weights (continued pretraining, fine-tuning).

`init_from` names anything `llamalab.load` reads — a GGUF file (dequantized), an HF or Meta directory, a
run of ours. The model is the checkpoint's; the run's `model` key may change only what leaves the weights'
shapes alone (rope θ and scaling, max_seq_len: context extension). The checkpoint's tokenizer and chat
template travel with the exported model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelArgs
from ..data.prepare import vocab_fingerprint
from ..data.shards import read_manifest
from ..errors import LlamalabError
from ..formats import load_state, load_tokenizer_for
from ..model import rope_frequencies
from .run_config import TrainConfig


@dataclass
class Source:
    state: dict[str, torch.Tensor]  # fp32 tensors in our names
    args: ModelArgs  # the checkpoint's, with the run's safe overrides
    path: Path
    format: str
    tokenizer: object | None  # the checkpoint's Tokenizer (None if it ships none)

    def full_tensor(self, name: str, shape, dtype) -> torch.Tensor:
        """`full_tensor` for train.parallel.materialize: the checkpoint's tensor."""
        w = self.state[name]
        if tuple(w.shape) != tuple(shape):
            raise LlamalabError(f"{self.path}: tensor {name} has shape {tuple(w.shape)}, the model wants {tuple(shape)}")
        return w.to(dtype)


def load_source(cfg: TrainConfig, *, tokenizer: bool = True) -> Source:
    """The checkpoint `cfg.init_from`, its config with the run's overrides, and its tokenizer."""
    overrides = cfg.model_overrides()
    src = load_state(cfg.init_from)
    state, args, fmt, path = src.state, src.args, src.format, src.path
    if overrides.get("rope_scaling") is not None and not isinstance(overrides["rope_scaling"], dict):
        raise LlamalabError(f"config: model.rope_scaling must be a mapping such as {{type: linear, factor: 2.0}}, "
                            f"got {overrides['rope_scaling']!r}")
    try:
        args = args.replace(**overrides)
        rope_frequencies(args)  # an unknown scaling kind is an error now, not at the first forward
    except (TypeError, ValueError) as e:
        raise LlamalabError(f"config: model overrides {overrides} are not valid for {path}: {e}") from None
    if cfg.seq_len and cfg.seq_len > args.max_seq_len:
        raise LlamalabError(f"seq_len {cfg.seq_len} is longer than {path}'s context ({args.max_seq_len} positions); "
                            f"lower seq_len, or extend the context: model.max_seq_len with model.rope_scaling or "
                            f"model.rope_theta")
    tok = load_tokenizer_for(fmt, path, args.vocab_size, src.extra) if tokenizer else None
    state = {k: v.float() for k, v in state.items()}
    return Source(state, args, path, fmt, tok)


def check_data_tokenizer(data, source: Source) -> None:
    """The data must be tokenized with the checkpoint's tokenizer: the same vocabulary (fingerprint), or at least
    the same size when the dataset records no tokenizer (synthetic data)."""
    manifest, _ = read_manifest(data)
    recorded = manifest.get("tokenizer") or {}
    vocab = manifest.get("vocab_size")
    where = recorded.get("path") or data
    fix = (f"tokenize it with the checkpoint's own: llamalab data prepare --tokenizer {source.path} ...")
    if source.tokenizer is None:
        if vocab is not None and vocab > source.args.vocab_size:
            raise LlamalabError(f"the data in {data} has a {vocab}-token vocabulary but {source.path} embeds only "
                                f"{source.args.vocab_size} tokens; {fix}")
        return
    if vocab is not None and vocab != source.tokenizer.vocab_size:
        raise LlamalabError(f"the data in {data} was tokenized with a {vocab}-token vocabulary ({where}) but "
                            f"{source.path}'s tokenizer has {source.tokenizer.vocab_size}; {fix}")
    if recorded.get("vocab_sha256") and recorded["vocab_sha256"] != vocab_fingerprint(source.tokenizer):
        raise LlamalabError(f"the data in {data} was tokenized with a different vocabulary ({where}) from "
                            f"{source.path}'s (the same size, other pieces); {fix}")
