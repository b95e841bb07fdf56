from .types import finite_float, nonnegative_float, positive_float, positive_int

HELP = "A training run's compute, time, energy, carbon and memory per GPU, before it is run (Tables 2 and 15)."

EPILOG = """examples:
  llamalab plan --model llama-7b --gpus 2048              # the paper's 1.0T tokens, A100-80GB, FSDP
  llamalab plan --params 1.3B --tokens 300B --gpu h100-80gb --gpus 64 --mfu 0.45
  llamalab plan --config llama-7b --gpus 256 --json       # a training config as `llamalab train` runs it
  llamalab plan --model llama-65b --gpus 2048 --tensor-parallel 8   # memory per GPU, tp 8 × fsdp 256
  llamalab plan --paper                                   # Table 15 and the 65B run, recomputed"""


def add_arguments(p):
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    what = p.add_mutually_exclusive_group()
    what.add_argument("--model", help="a preset (see `llamalab params --list`)")
    what.add_argument("--params", help="a parameter count (7B, 1.3e9): the closest LLaMA-shaped model")
    what.add_argument("--config", help="a training config (YAML/TOML, or a bundled name such as llama-7b)")
    what.add_argument("--paper", action="store_true", help="Table 15 and the 65B run recomputed beside the paper")
    p.add_argument("--tokens", help="training tokens (1.4T, 300B, 2e9; default: the paper's for its models, the "
                                    "config's, else Chinchilla's 20 per parameter)")
    p.add_argument("--gpus", type=positive_int, default=8, help="number of GPUs (default 8)")
    p.add_argument("--gpu", default="a100-80gb", help="GPU type (default a100-80gb, the paper's); "
                                                      "a100-40gb, h100-80gb, h200, l40s, rtx-4090, mi300x, ...")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--mfu", type=finite_float, help="model FLOPs utilization, 0-1 (default 0.4; the paper's runs "
                                                 "imply 0.46-0.54, see --paper)")
    speed.add_argument("--tokens-per-gpu-s", type=positive_float, help="measured training throughput per GPU instead")
    p.add_argument("--seq-len", type=positive_int, help="sequence length (default: the model's context)")
    p.add_argument("--micro-batch", type=positive_int, help="sequences per GPU per step (default: the largest that fits)")
    p.add_argument("--parallel", choices=("fsdp", "ddp", "none"), help="default fsdp")
    p.add_argument("--tensor-parallel", type=positive_int, metavar="N",
                   help="GPUs per model copy, split by heads with sequence parallelism (default 1)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), help="default bf16")
    p.add_argument("--pue", type=positive_float, default=1.1, help="data-center power usage effectiveness (default 1.1)")
    p.add_argument("--carbon-intensity", type=nonnegative_float, default=0.385, help="kg CO2eq per kWh (default 0.385)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args):
    import json

    from ..errors import LlamalabError
    from ..plan.paper import format_paper, run_65b, table_15
    from ..plan.planner import plan_training
    from ..plan.report import format_plan

    if args.paper:
        print(json.dumps({"table_15": table_15(), "run_65b": run_65b()}, indent=2) if args.json else format_paper())
        return
    if args.pue < 1 or args.carbon_intensity < 0:
        raise LlamalabError(f"--pue must be at least 1 and --carbon-intensity non-negative, got {args.pue:g} and "
                            f"{args.carbon_intensity:g}")
    plan = plan_training(model=args.model, params=args.params, config=args.config, tokens=args.tokens,
                         gpus=args.gpus, gpu=args.gpu, mfu=args.mfu, tokens_per_gpu_s=args.tokens_per_gpu_s,
                         seq_len=args.seq_len, micro_batch=args.micro_batch, parallel=args.parallel,
                         dtype=args.dtype, pue=args.pue, carbon=args.carbon_intensity,
                         tensor_parallel=args.tensor_parallel)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
