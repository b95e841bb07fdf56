from .common import add_config_arguments, parse_overrides

HELP = ("Instruction-tune a checkpoint (Alpaca / ShareGPT / messages / prompt-completion data): full, LoRA, QLoRA or "
        "LLaMA-Adapter.")

EPILOG = """examples:
  llamalab finetune --model SmolLM2-135M-Instruct.Q4_1.gguf --data pairs.jsonl --out runs/ft --lora-rank 8
  llamalab finetune --model smol-hf/ --data alpaca.json --out runs/full --epochs 1 --lr 1e-5
  llamalab finetune --model llama-7b/ --data sharegpt.json --out runs/qlora --lora-rank 64 --quantize-base nf4
  llamalab finetune --model llama-7b/ --data alpaca.json --out runs/adapter --method llama-adapter --adapter-len 10
  torchrun --nproc_per_node 2 -m llamalab finetune --model M --data D --out O --lora-rank 8 --parallel ddp
  llamalab finetune --stage 1 --model llava-hf/ --data captions.json --image-dir images/ --out runs/s1
  llamalab finetune --stage 2 --model runs/s1/model --data llava_instruct.json --image-dir images/ --out runs/s2 \
      --lora-rank 16          (LLaVA: stage 1 the projector alone, stage 2 projector + language model)
The run resumes with --resume; every config key is a --flag (see `llamalab train --help` for the loop's)."""


def add_arguments(p):
    from ..finetune.config import NOT_FOR_FINETUNING, FinetuneConfig

    # the model is --model's checkpoint; model.<field>=... overrides only what may change (rope, context)
    add_config_arguments(p, FinetuneConfig, EPILOG, config_help="YAML or TOML file of config keys",
                         renamed={"init_from": "model", "out_dir": "out"}, skip=("model", *NOT_FOR_FINETUNING))


def run(args):
    from ..finetune import FinetuneConfig, finetune
    from ..train.run_config import load_config

    cfg = load_config(args.config, parse_overrides(args), cls=FinetuneConfig)
    report = finetune(cfg, resume=args.resume)
    if report is None:  # not the main rank
        return
    ex = report["examples"]
    print(f"data: {report['format']} records, template: {report['template']}")
    for part in ("train", "validation"):
        c = ex[part]
        print(f"  {part:10s} {c['used']} examples used, {c['truncated']} truncated to seq_len, {c['skipped']} skipped "
              f"(no answer token within seq_len)")
    print(f"parameters: {report['trainable_params']:,} trainable of {report['total_params']:,} ({report['method']})")
    if "base_bytes_quantized" in report:
        print(f"frozen base: {report['base_bytes'] / 2**20:,.1f} MiB → {report['base_bytes_quantized'] / 2**20:,.1f} "
              f"MiB in {cfg.quantize_base}")
    if report["val_loss_before"] is not None and report["val_loss_after"] is not None:
        print(f"validation loss: {report['val_loss_before']:.4f} before → {report['val_loss_after']:.4f} after "
              f"{report['steps']} steps ({report['epochs']} epochs)")
    for s in report["samples"]:
        print(f"\n> {s['instruction']}\n  before: {s['before']}\n  after:  {s['after']}")
    where = report.get("adapter_dir") or report.get("model_dir")
    print(f"\n  report {cfg.out_dir}/report.json" + (f"\n  {'adapter' if 'adapter_dir' in report else 'model  '} {where}"
                                                      if where else ""))
    if where:  # chat in the format it was trained in
        model = f"--model {cfg.init_from} --adapter {where}" if "adapter_dir" in report else f"--model {where}"
        print(f"  chat    llamalab chat {model}" + (f" --template {cfg.template}" if cfg.template else ""))
