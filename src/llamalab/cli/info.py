from collections import Counter

HELP = ("Show a checkpoint's format, config, parameter count and tensors (GGUF file, HF or Meta directory; a "
        "llava-hf directory or an mmproj file: its vision tower and projector).")


def add_arguments(p):
    p.add_argument("path", help="a .gguf file, an HF directory (config.json + *.safetensors) or a Meta "
                                "directory (params.json + consolidated.*.pth)")
    p.add_argument("--tensors", action="store_true", help="list every tensor (default: the first layer only)")
    p.add_argument("--mmproj", help="llama.cpp's pair: the text GGUF's projector file, described after it and "
                                    "checked against it")


def run(args):
    from pathlib import Path

    from ..formats import expected_shapes, llava, load_state, mmproj
    from ..formats.gguf_mix import type_summary

    if mmproj.is_mmproj(Path(args.path)) and not args.mmproj:
        return print("\n".join(mmproj.describe(Path(args.path))))
    if llava.is_llava(Path(args.path)) and not args.mmproj:
        return print("\n".join(llava.describe(Path(args.path) if Path(args.path).is_dir() else Path(args.path).parent)))
    src = load_state(args.path, lazy=True)
    pair = mmproj.describe(Path(args.mmproj), text_dim=src.args.dim) if args.mmproj else []  # checked first
    state, cfg, extra, fmt, path = src.state, src.args, src.extra, src.format, src.path  # shapes only: instant for any size
    meta = extra.get("metadata", {})
    # how each tensor is stored: the file's own types where it has them (GGUF's Q4_1, a quantized directory's
    # int4 groups), else the dtype
    types = {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()} | extra.get("tensor_types", {})
    print(f"format      {fmt}")
    print(f"path        {path}")
    if meta.get("general.name"):
        print(f"name        {meta['general.name']}")
    if extra.get("shards", 1) > 1:
        print(f"shards      {extra['shards']} model-parallel files (merged)")
    print(f"params      {sum(v.numel() for v in state.values()):,}")
    print(f"config      dim={cfg.dim} n_layers={cfg.n_layers} n_heads={cfg.n_heads} n_kv_heads={cfg.kv_heads} "
          f"head_dim={cfg.head_dim} ffn_dim={cfg.hidden_dim}")
    print(f"            vocab_size={cfg.vocab_size} norm_eps={cfg.norm_eps:g} rope_theta={cfg.rope_theta:g} "
          f"rope_scaling={cfg.rope_scaling} max_seq_len={cfg.max_seq_len} tie_embeddings={cfg.tie_embeddings}")
    if extra.get("quantization"):
        print(f"quantized   {extra['quantization']}")
    print("dtypes      " + ", ".join(f"{t}: {n}" for t, n in Counter(types.values()).most_common()))
    if fmt == "gguf":  # each tensor group's GGML types, and the file's bits per weight
        groups, bpw, size, weights = type_summary(path)
        for i, (group, kinds) in enumerate(groups):
            counts = ", ".join(f"{k} ×{n}" for k, n in kinds.most_common())
            print(f"{'types' if i == 0 else '':<12}{group:<12} {counts}")
        print(f"bits/weight {bpw:.2f} ({size:,} tensor bytes over {weights:,} weights)")
    tok = src.tokenizer()
    if tok is not None:
        print(f"tokenizer   {type(tok).__name__}: {tok.vocab_size} tokens, bos={tok.bos_token!r} "
              f"eos={tok.eos_token!r} add_bos={tok.add_bos} chat_template={'yes' if tok.chat_template else 'no'}")
    else:
        print("tokenizer   none found")
    order = [k for k in expected_shapes(cfg) if k in state]  # the model's own order
    names = order if args.tensors else [k for k in order if not k.startswith("layers.") or k.startswith("layers.0.")]
    print(f"tensors     {len(state)}" + ("" if args.tensors else f" (showing {len(names)}; --tensors for all)"))
    width = max(len(n) for n in names)
    for name in names:
        print(f"  {name:<{width}}  {str(tuple(state[name].shape)):<16} {types[name]}")
    if pair:
        print("\n".join(pair))
