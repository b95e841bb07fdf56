"""Options several subcommands share (not a subcommand itself): the checkpoint to load, sampling, chat, and
a run's config keys (train, finetune)."""

import argparse

from ..errors import LlamalabError
from .types import nonnegative_float, nonnegative_int, positive_float, positive_int, probability, seed


def add_config_arguments(p, cls, epilog: str, config_help: str, renamed: dict | None = None, skip=()):
    """--config, --resume, key=value overrides, and a --flag for every key of the config class `cls`
    (`--max_steps` and `--max-steps` alike; `renamed` gives some keys another flag)."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = epilog
    p.add_argument("--config", help=config_help)
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint of the run")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (model.<field>=... too)")
    group = p.add_argument_group("config keys (each overrides the file)")
    for key in cls.keys():
        if key not in skip:
            flag = (renamed or {}).get(key, key)
            names = dict.fromkeys([f"--{flag.replace('_', '-')}", f"--{flag}"])
            group.add_argument(*names, dest=f"set_{key}", metavar="V", default=None)
    add_threads_argument(p)


def parse_overrides(args) -> list[tuple[str, str]]:
    """The (key, value) pairs of the --key flags and the key=value arguments, in that order."""
    pairs = [(k[4:], v) for k, v in vars(args).items() if k.startswith("set_") and v is not None]
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise LlamalabError(f"cannot read override {item!r}: write key=value or --key value")
        pairs.append((key, value))
    return pairs


def add_model_arguments(p, *, keep_quantized: bool = True, required: bool = True):
    """--model, --dtype, --device: which checkpoint, loaded how. keep_quantized: without --dtype, a
    quantized checkpoint runs quantized (else the default dequantizes to float32)."""
    p.add_argument("--model", required=required, help="checkpoint: .gguf file, HF or Meta directory, hub id, or a "
                   "library name (`llamalab models list`)" + ("" if required else "; none: the whole library"))
    if keep_quantized:
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                       help="dequantize to this dtype (default: quantized weights stay quantized, else float32)")
    else:
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    add_threads_argument(p)


def add_threads_argument(p):
    """--threads N: the CPU threads of a command that runs a model (`llamalab.threads`; the command line applies
    it before torch loads). Every command that runs a model has it: through `add_model_arguments`,
    `add_config_arguments`, or directly (demo, quantize, data prepare)."""
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: $LLAMALAB_THREADS, else "
                   "$OMP_NUM_THREADS, else the CPUs available, fewer while other processes keep them busy)")


def add_sampling_arguments(p, max_new_tokens: int):
    """How tokens are picked, and how many."""
    p.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens, metavar="N")
    p.add_argument("--temperature", type=nonnegative_float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--top-k", type=nonnegative_int, metavar="K", help="sample among the K most probable tokens")
    p.add_argument("--top-p", type=probability, metavar="P", help="nucleus: smallest set with total probability >= P")
    p.add_argument("--min-p", type=probability, metavar="P", help="drop tokens less than P x the top probability")
    p.add_argument("--repetition-penalty", type=positive_float, default=1.0, metavar="R", help="HF/CTRL penalty, e.g. 1.1")
    p.add_argument("--seed", type=seed, metavar="S", help="seed for reproducible sampling")


def add_adapter_argument(p):
    """--adapter: a LoRA adapter (ours or peft's) applied to the --model checkpoint by `load_model`."""
    p.add_argument("--adapter", metavar="DIR", help="a LoRA adapter directory (ours or peft's), or a LLaMA-Adapter "
                   "(peft's adaption_prompt layout), to run the model with")


def add_compile_argument(p):
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (pays off after the first ~100 tokens)")


def add_chat_arguments(p):
    """--system, --template: how a conversation becomes a prompt."""
    p.add_argument("--system", metavar="TEXT", help="system prompt (chat)")
    p.add_argument("--template", metavar="NAME",
                   help="chat template: alpaca, llama-2, chatml, a Jinja file; default: the checkpoint's own")


def load_model(args):
    """`runtime.load_runnable` with this command's --model, --device, --dtype and, where it has them, --adapter,
    --tensor-parallel, --threads, --template and --compile."""
    from ..runtime import load_runnable

    return load_runnable(args.model, device=args.device, dtype=args.dtype, adapter=getattr(args, "adapter", None),
                         tensor_parallel=getattr(args, "tensor_parallel", 1), threads=getattr(args, "threads", None),
                         template=getattr(args, "template", None), compile=getattr(args, "compile", False),
                         mmproj=getattr(args, "mmproj", None))


def add_mmproj_argument(p):
    """--mmproj FILE: llama.cpp's LLaVA projector file for a text GGUF (generate, chat, serve)."""
    p.add_argument("--mmproj", metavar="FILE", help="llama.cpp's LLaVA projector file (mmproj-*.gguf: a CLIP vision "
                   "tower and projector) for the --model GGUF, so it takes images")


def context_length(args, model_context: int | None = None, default: int = 2048) -> int | None:
    """The tokens per sequence the KV cache holds (`--context N`; the cache is allocated up front): N in 1..the
    model's context, default min(model's, `default`); `--max-new-tokens`, where the command has it, in 1..N-1
    (an answer leaves room for a message). Before the model is loaded (model_context None) only the lower
    bounds are checked, so a bad number fails at once."""
    context, new = args.context, getattr(args, "max_new_tokens", None)
    if context is not None and context < 1:
        raise LlamalabError(f"--context must be >= 1, got {context}")
    if new is not None and new < 1:
        raise LlamalabError(f"--max-new-tokens must be >= 1, got {new}")
    if model_context is None:
        return None
    if context is not None and context > model_context:
        raise LlamalabError(f"--context {context} is larger than the model's context of {model_context} tokens")
    context = context or min(model_context, default)
    if new is not None and new >= context:
        raise LlamalabError(f"--max-new-tokens {new} leaves no room for a message in the context of {context} "
                            f"tokens; lower it below {context}")
    return context


def add_tensor_parallel_argument(p):
    p.add_argument("--tensor-parallel", type=positive_int, default=1, metavar="N",
                   help="shard the weights and KV cache by heads over N processes (torchrun --nproc_per_node N)")


def sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
