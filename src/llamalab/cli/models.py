import json
import time

HELP = "The model library: import a checkpoint under a name, list, show, copy (cp) and remove (rm) models."


def add_arguments(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="store a .gguf file, an HF/Meta directory or a quantize directory as NAME")
    imp.add_argument("path")
    imp.add_argument("--name", required=True, help="NAME[:TAG] (tag default: latest)")
    sub.add_parser("list", help="every model: name, size, format, quantization, modified")
    show = sub.add_parser("show", help="a model's config, template, parameters, license and files")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    cp = sub.add_parser("cp", help="another name for a model (no bytes copied)")
    cp.add_argument("src")
    cp.add_argument("dst")
    rm = sub.add_parser("rm", help="forget names; their bytes go with the last name that uses them")
    rm.add_argument("names", nargs="+")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def run(args):
    from .. import models

    if args.action == "import":
        entry = models.import_model(args.path, args.name)
        print(f"{entry['name']}  {_size(entry['size'])}  {entry['format']}  {entry['quantization']}")
    elif args.action == "list":
        print(f"{'NAME':32s} {'SIZE':>10s}  {'FORMAT':6s} {'QUANT':10s} MODIFIED")
        for e in models.listing():
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["modified"]))
            print(f"{e['name']:32s} {_size(e['size']):>10s}  {e['format']:6s} {e['quantization']:10s} {when}")
    elif args.action == "show":
        e = models.show(args.name)
        if args.json:
            print(json.dumps(e, indent=1))
            return
        for key in ("name", "format", "quantization", "parameters", "family", "license", "source"):
            print(f"{key:13s} {e.get(key)}")
        print("config        " + " ".join(f"{k}={v}" for k, v in e["config"].items()))
        print(f"size          {_size(e['size'])} in {len(e['files'])} file(s)")
        print("template      " + ("yes (--json shows it)" if e.get("template") else "none"))
        if e.get("modelfile"):
            print(f"from          {e['parent']}\nModelfile:\n" + e["modelfile"], end="")
    elif args.action == "cp":
        models.copy(args.src, args.dst)
    else:
        for name in args.names:
            models.remove(name)
