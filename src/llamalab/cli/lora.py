HELP = "LoRA adapters: fold one into its base checkpoint (`lora merge`) and write a normal checkpoint."


def add_arguments(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = sub.add_parser("merge", help="base + adapter → one checkpoint (hf, meta or gguf)")
    m.add_argument("--model", required=True, help="the base: a .gguf file, an HF or Meta directory, a hub id, or a library name")
    m.add_argument("--adapter", required=True, help="adapter directory (ours or peft's: adapter_config.json + "
                   "adapter_model.safetensors)")
    m.add_argument("--out", required=True, help="output directory (a file for --to gguf)")
    m.add_argument("--to", choices=["hf", "meta", "gguf"], default="hf", help="output format (default hf)")
    m.add_argument("--gguf-type", choices=["f32", "f16", "q8_0"], default="f32", help="--to gguf: tensor type")
    m.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args):
    from ..finetune.merge import merge_checkpoint

    done = merge_checkpoint(args.model, args.adapter, args.out, args.to, force=args.force, gguf_type=args.gguf_type)
    print(f"wrote {done['out']} ({done['format']}): {done['base']} with the adapter folded into {done['layers']} layers")
