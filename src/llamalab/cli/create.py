HELP = "Make a library model of an ollama Modelfile (FROM, PARAMETER, SYSTEM, TEMPLATE, ADAPTER, MESSAGE, LICENSE)."


def add_arguments(p):
    p.add_argument("name", help="NAME[:TAG] of the new model")
    p.add_argument("-f", "--file", default="Modelfile", metavar="MODELFILE",
                   help="the Modelfile (default: ./Modelfile); its relative paths are relative to its directory")


def run(args):
    from pathlib import Path

    from ..errors import LlamalabError
    from ..models import create

    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LlamalabError(f"{path}: cannot read the Modelfile ({getattr(e, 'strerror', None) or e})") from None
    entry = create(args.name, text, base_dir=path.resolve().parent, progress=lambda status: print(status))
    print(f"{entry['name']}  from {entry['parent']}")
