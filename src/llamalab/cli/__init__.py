"""`llamalab <subcommand>`: each subcommand lives in `llamalab/cli/<name>.py` and is a thin call into
one library function. A module defines `HELP`, `add_arguments(parser)` and `run(args) -> int | None`.

Imports: modules import what they use at the top, with one exception that the whole package follows —
library code that loads torch, numpy or another heavy library (gguf, pyarrow, protobuf, matplotlib,
transformers, lm-eval) is imported inside the function that needs it when the module is on a path that
must stay light: here, where every subcommand is imported to build `--help`, and in `llamalab/__init__`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LlamalabError

# subcommand → module under llamalab.cli (order = order in --help)
COMMANDS = {
    "params": "params",
    "info": "info",
    "convert": "convert",
    "assets": "assets",
    "tokenize": "tokenize",
    "tokenizer": "tokenizer",
    "generate": "generate",
    "chat": "chat",
    "serve": "serve",
    "data": "data",
    "train": "train",
    "finetune": "finetune",
    "lora": "lora",
    "eval": "eval",
    "perplexity": "perplexity",
    "quantize": "quantize",
    "demo": "demo",
    "self-instruct": "self_instruct",
    "judge": "judge",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamalab", description="The LLaMA paper, end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args._run(args)
    except LlamalabError as e:
        print(f"llamalab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llamalab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `llamalab ... | head`
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
