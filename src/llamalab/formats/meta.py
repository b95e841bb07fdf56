"""Meta's original release: `params.json` + `consolidated.NN.pth`, one file per model-parallel rank.

Our parameter names and rotary layout are Meta's, so a single-file checkpoint loads as is. With N ranks
each file holds a slice of every matrix, split as fairscale's layers split them:
  - ColumnParallelLinear (wq, wk, wv, w1, w3, output): output rows, dim 0;
  - RowParallelLinear (wo, w2): input columns, dim 1;
  - ParallelEmbedding (tok_embeddings, LLaMA-1/2): the embedding dim, dim 1
    (LLaMA-3's VocabParallelEmbedding splits the vocabulary, dim 0; told apart by the shapes);
  - norms: replicated.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch

from ..atomic import refused_write, staged_dir, write_text
from ..config import ModelArgs
from ..bounded import read_json
from ..errors import LlamalabError
from ..tokenizer import save_tokenizer
from .output import check_output

SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def split_dim(name: str) -> int | None:
    """The dim a model-parallel checkpoint splits this tensor along (None: replicated)."""
    return SPLIT_DIM.get(name.removesuffix(".weight").rsplit(".", 1)[-1])


def args_from_params(params: dict, where, vocab_size: int) -> ModelArgs:
    if not isinstance(params, dict):
        raise LlamalabError(f"{where}: params.json holds a {type(params).__name__}, not an object of settings")
    known = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
             "norm_eps", "rope_theta", "max_seq_len", "use_scaled_rope"}
    missing = [k for k in ("dim", "n_layers", "n_heads") if k not in params]
    if missing:
        raise LlamalabError(f"{where}: params.json lacks {missing}")
    try:
        scaling = None
        if params.get("use_scaled_rope"):  # LLaMA-3.1: the constants of Meta's apply_scaling
            scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}
        args = {k: v for k, v in params.items() if k in known - {"use_scaled_rope"}}
        if args.get("vocab_size", -1) in (-1, 0):  # LLaMA-1 writes -1: the tokenizer decides, read it off the tensor
            args["vocab_size"] = vocab_size
        return ModelArgs(**args, rope_scaling=scaling)
    except (TypeError, ValueError, LlamalabError) as e:
        raise LlamalabError(f"{where}: invalid params.json ({e})") from None


def params_from_args(args: ModelArgs) -> dict:
    """params.json as Meta's `ModelArgs(**params)` reads it; the FFN width encoded with its own rule."""
    params = {"dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
              "n_kv_heads": args.kv_heads, "vocab_size": args.vocab_size, "multiple_of": args.multiple_of,
              "ffn_dim_multiplier": args.ffn_dim_multiplier, "norm_eps": args.norm_eps,
              "rope_theta": args.rope_theta, "max_seq_len": args.max_seq_len}
    if args.ffn_dim is not None and args.replace(ffn_dim=None).hidden_dim != args.ffn_dim:
        # an explicit width (e.g. from HF intermediate_size): multiple_of = ffn_dim makes the 2/3·4d rule
        # round up to exactly ffn_dim, after a multiplier brings 2/3·4d below it
        base = int(2 * (4 * args.dim) / 3)
        params["multiple_of"] = args.ffn_dim
        params["ffn_dim_multiplier"] = None if base <= args.ffn_dim else args.ffn_dim / base
    if args.rope_scaling:
        if args.rope_scaling.get("rope_type") != "llama3":
            raise LlamalabError(f"Meta format cannot express rope scaling {args.rope_scaling}")
        params["use_scaled_rope"] = True
    return {k: v for k, v in params.items() if v is not None}


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    """Tensors only: `weights_only=True` refuses pickled code (a .pth is a pickle, i.e. a program)."""
    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) .pth
    except pickle.UnpicklingError as e:
        globals_ = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line.upper()]
        if globals_:
            raise LlamalabError(f"{file}: refused to load: the pickle contains more than tensors "
                                f"({globals_[0][:160]}); it could run code") from None
        raise LlamalabError(f"{file}: not a readable PyTorch checkpoint (damaged pickle); is it truncated?") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise LlamalabError(f"{file}: not a readable PyTorch checkpoint ({str(e).splitlines()[0][:160]}); "
                            "is it truncated?") from None


def merge_shards(shards: list[dict[str, torch.Tensor]], dim: int) -> dict[str, torch.Tensor]:
    """Concatenate model-parallel slices back into full tensors."""
    if len(shards) == 1:
        return dict(shards[0])
    state = {}
    for name, first in shards[0].items():
        d = split_dim(name)
        if name == "tok_embeddings.weight" and first.shape[1] == dim:
            d = 0  # LLaMA-3: vocabulary-parallel embedding
        state[name] = first if d is None else torch.cat([s[name] for s in shards], dim=d)
    return state


def load_state(path, *, lazy: bool = False) -> tuple[dict[str, torch.Tensor], ModelArgs, dict]:
    """Read (and merge) a Meta directory. lazy: meta-device tensors; the files are memory-mapped and only
    the embedding / output matrices are read (to tell a tied checkpoint)."""
    path = Path(path)
    try:
        params = read_json(path / "params.json")
    except (OSError, ValueError) as e:
        raise LlamalabError(f"{path / 'params.json'}: cannot read ({e})") from None
    files = sorted(path.glob("consolidated.*.pth"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    shards = [_torch_load(f) for f in files]
    for f, s in zip(files, shards):
        if not isinstance(s, dict) or not all(isinstance(v, torch.Tensor) for v in s.values()):
            raise LlamalabError(f"{f}: expected a dict of tensors")
        if set(s) != set(shards[0]):
            raise LlamalabError(f"{f}: holds different tensor names than {files[0].name}")
    keep = ("tok_embeddings.weight", "output.weight")
    shards = [{k: v.to("meta") if lazy and k not in keep else v for k, v in s.items() if k != "rope.freqs"}
              for s in shards]  # LLaMA-1 also saved a rope.freqs buffer
    if "tok_embeddings.weight" not in shards[0]:
        raise LlamalabError(f"{files[0]}: no tok_embeddings.weight; not a LLaMA checkpoint")
    state = merge_shards(shards, params.get("dim", 0) if isinstance(params, dict) else 0)
    args = args_from_params(params, path / "params.json", state["tok_embeddings.weight"].shape[0])
    # Meta's format has no tying flag: output.weight absent or identical to the embedding means tied
    out = state.get("output.weight")
    if out is None or torch.equal(out, state["tok_embeddings.weight"]):
        state.pop("output.weight", None)
        args = args.replace(tie_embeddings=True)
    if lazy:
        state = {k: v.to("meta") for k, v in state.items()}
    return state, args, {"metadata": params, "shards": len(files)}


def split_shards(state: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    """Slice every tensor into n model-parallel pieces, as Meta's training code holds them."""
    shards = [{} for _ in range(n)]
    for name, w in state.items():
        d = split_dim(name)
        if d is not None and w.shape[d] % n:
            raise LlamalabError(f"cannot split {name} {tuple(w.shape)} into {n} model-parallel shards along dim {d}")
        for shard, piece in zip(shards, [w] * n if d is None else w.chunk(n, dim=d)):
            shard[name] = piece.clone()  # own storage: torch.save would otherwise write the whole tensor
    return shards


def save(state: dict[str, torch.Tensor], args: ModelArgs, out, *, tokenizer_src=None, shards: int = 1,
         dtype: torch.dtype | None = None, force: bool = False) -> Path:
    """params.json + consolidated.00.pth … (shards files), atomically (the directory appears complete or not
    at all; `force` replaces an existing one, see `output`). Tied embeddings are written as two copies
    (Meta's model has no tying); reading back detects them as tied."""
    check_output(out, "meta", force=force)
    full = {k: (v if dtype is None else v.to(dtype)) for k, v in state.items()}
    if "output.weight" not in full:
        full["output.weight"] = full["tok_embeddings.weight"]
    with staged_dir(out) as tmp:
        for k, shard in enumerate(split_shards(full, shards)):
            try:
                torch.save(shard, tmp / f"consolidated.{k:02d}.pth")
            except RuntimeError:  # torch.save hides the errno of a full disk ("unexpected pos ...")
                refusal = refused_write(out)
                if refusal is None:
                    raise
                raise refusal from None
        write_text(tmp / "params.json", json.dumps(params_from_args(args), indent=2) + "\n")
        save_tokenizer(tokenizer_src, tmp)
    return Path(out)
