HELP = "Exact parameter count of a named preset (built on the meta device, no memory used)."


def add_arguments(p):
    p.add_argument("name", help="preset name, e.g. llama-7b (see `llamalab params --list`)", nargs="?")
    p.add_argument("--list", action="store_true", help="list the presets with their counts")


def run(args):
    from ..config import PRESETS, get_preset
    from ..plan import count_params

    if args.list or not args.name:
        for name, cfg in PRESETS.items():
            print(f"{name:16s} {count_params(cfg):>16,d}  dim={cfg.dim} layers={cfg.n_layers} "
                  f"heads={cfg.n_heads}/{cfg.kv_heads} ffn={cfg.hidden_dim} vocab={cfg.vocab_size}")
        return
    cfg = get_preset(args.name)
    print(count_params(cfg))
    print(f"dim={cfg.dim} n_layers={cfg.n_layers} n_heads={cfg.n_heads} n_kv_heads={cfg.kv_heads} "
          f"ffn_dim={cfg.hidden_dim} vocab_size={cfg.vocab_size} tie_embeddings={cfg.tie_embeddings}")
