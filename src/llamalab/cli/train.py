from ..train import TrainConfig
from .common import add_config_arguments, parse_overrides

HELP = "Pretrain a LLaMA model with the paper's recipe (works unchanged under torchrun)."

EPILOG = """examples:
  llamalab train --config src/llamalab/configs/demo.yaml --max_steps 200
  llamalab train --config my.toml lr=1e-3 model.n_layers=4 --resume
  torchrun --nproc_per_node 2 -m llamalab train --config my.yaml --parallel fsdp"""


def add_arguments(p):
    add_config_arguments(p, TrainConfig, EPILOG, config_help="YAML or TOML file of TrainConfig keys (a bundled "
                         "name such as `demo` also works)")


def run(args):
    from ..train import load_config, resolve_config_path, train

    cfg = load_config(resolve_config_path(args.config) if args.config else None, parse_overrides(args))
    summary = train(cfg, resume=args.resume)
    if summary.get("loss_png"):
        losses = [f"{name} {summary[key]:.4f}" for key, name in (("loss", "loss"), ("val_loss", "held-out loss"))
                  if summary.get(key) is not None]  # none when a finished run is resumed
        before = summary.get("val_loss_before")
        print(f"done: step {summary['step']}" + "".join(f", {x}" for x in losses)
              + (f" (before training: {before:.4f})" if before is not None else ""))
        for key, v in summary.get("held_out", {}).items():  # "@512" (tokens) or "/code" (a source)
            what = f"at {key[1:]} tokens" if key.startswith("@") else f"on {key[1:]}"
            print(f"  held-out loss {what}: " + (f"{v['before']:.4f} before → " if v["before"] is not None else "")
                  + f"{v['after']:.4f}")
        print(f"  metrics   {summary['out_dir']}/metrics.jsonl\n  loss plot {summary['loss_png']}\n"
              f"  checkpoints {summary['out_dir']}/ckpt/" + (f"\n  model     {summary['model_dir']}" if summary.get("model_dir") else ""))
