import argparse

from ..errors import LlamalabError
from ..train import TrainConfig

HELP = "Pretrain a LLaMA model with the paper's recipe (works unchanged under torchrun)."

EPILOG = """examples:
  llamalab train --config src/llamalab/configs/demo.yaml --max_steps 200
  llamalab train --config my.toml lr=1e-3 model.n_layers=4 --resume
  torchrun --nproc_per_node 2 -m llamalab train --config my.yaml --parallel fsdp"""


def add_arguments(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--config", help="YAML or TOML file of TrainConfig keys (a bundled name such as `demo` also works)")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in out_dir")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (model.<field>=... too)")
    group = p.add_argument_group("config keys (each overrides the file)")
    for key in TrainConfig.keys():
        group.add_argument(f"--{key}", dest=f"set_{key}", metavar="V", default=None)


def parse_overrides(args) -> list[tuple[str, str]]:
    pairs = [(k[4:], v) for k, v in vars(args).items() if k.startswith("set_") and v is not None]
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise LlamalabError(f"cannot read override {item!r}: write key=value or --key value")
        pairs.append((key, value))
    return pairs


def run(args):
    from ..train import load_config, resolve_config_path, train

    cfg = load_config(resolve_config_path(args.config) if args.config else None, parse_overrides(args))
    summary = train(cfg, resume=args.resume)
    if summary.get("loss_png"):
        losses = [f"{name} {summary[key]:.4f}" for key, name in (("loss", "loss"), ("val_loss", "held-out loss"))
                  if summary.get(key) is not None]  # none when a finished run is resumed
        print(f"done: step {summary['step']}" + "".join(f", {x}" for x in losses))
        print(f"  metrics   {summary['out_dir']}/metrics.jsonl\n  loss plot {summary['loss_png']}\n"
              f"  checkpoints {summary['out_dir']}/ckpt/" + (f"\n  model     {summary['model_dir']}" if summary.get("model_dir") else ""))
