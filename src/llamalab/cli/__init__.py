"""`llamalab <subcommand>`: each subcommand lives in `llamalab/cli/<name>.py` and is a thin call into
one library function. A module defines `HELP`, `add_arguments(parser)` and `run(args) -> int | None`.

Imports: modules import what they use at the top, with one exception that the whole package follows —
library code that loads torch, numpy or another heavy library (gguf, pyarrow, protobuf, matplotlib,
transformers, lm-eval) is imported inside the function that needs it when the module is on a path that
must stay light: here, where every subcommand is imported to build `--help`, and in `llamalab/__init__`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys

from .. import threads
from ..errors import LlamalabError
from .types import Parser

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
    "models": "models",
    "create": "create",
    "run": "run",
    "data": "data",
    "train": "train",
    "finetune": "finetune",
    "lora": "lora",
    "eval": "eval",
    "perplexity": "perplexity",
    "quantize": "quantize",
    "imatrix": "imatrix",
    "demo": "demo",
    "plan": "plan",
    "experiment": "experiment",
    "self-instruct": "self_instruct",
    "judge": "judge",
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="llamalab", description="The LLaMA paper, end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


TEXT_ARGUMENTS = ("prompt", "system", "text", "stop")  # free text for a tokenizer (paths may be any bytes)


def require_utf8(text: str, what: str) -> str:
    """`text` if it came from valid UTF-8; Python keeps undecodable bytes of arguments and of stdin as lone
    surrogates, which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise LlamalabError(f"{what} is not valid UTF-8 text: byte 0x{ord(text[e.start]) - 0xDC00:02x} at position "
                            f"{e.start}; convert it first (e.g. with iconv)") from None
    return text


def check_text_arguments(args) -> None:
    for name in TEXT_ARGUMENTS:
        value = getattr(args, name, None)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                require_utf8(text, name)


def _silence_stdout() -> None:
    """After a failed write to stdout, send what is still buffered to /dev/null instead of failing again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def parse(argv: list[str] | None = None):
    """The parsed arguments; a bad one exits (SystemExit 2) with one line, `--help` with 0."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`train a=1 --resume b=2`); argparse fills a positional once
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
    except SystemExit as e:  # argparse's exit (a bad argument: 2; --help: 0) as this function's return code
        return e.code if isinstance(e.code, int) else 2
    try:
        check_text_arguments(args)
        # a command that runs a model runs under the thread policy (`--threads`)
        with threads.policy(args.threads) if hasattr(args, "threads") else contextlib.nullcontext():
            code = args._run(args)
    except LlamalabError as e:
        print(f"llamalab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llamalab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `llamalab ... | head`
        _silence_stdout()
        return 0
    except UnicodeDecodeError as e:  # text read from stdin or a file that is not UTF-8
        print(f"llamalab {args.command}: error: input is not valid UTF-8 text (byte 0x{e.object[e.start]:02x}); "
              f"convert it first (e.g. with iconv)", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the machine refusing (a full disk, a read-only directory) is one line
        refusal = os_error_behind(e)
        if refusal is None:
            raise
        _silence_stdout()  # in case stdout is what failed
        print(f"llamalab {args.command}: error: {describe_os_error(refusal, args)}", file=sys.stderr)
        return 2
    return int(code or 0)


OUTPUT_ARGUMENTS = ("out", "output", "log_samples")  # where a command writes, named when a write fails


def os_error_behind(e: BaseException) -> OSError | None:
    """The OSError that caused `e`: `e` itself, an explicit cause (`raise ... from`), or one a Rust library
    (safetensors, tokenizers) reported only in its message as "(os error N)". (Not an exception merely
    raised while handling an OSError: that may be a bug, which keeps its traceback.)"""
    cause = e
    while cause is not None:
        if isinstance(cause, OSError):
            return cause
        cause = cause.__cause__
    match = re.search(r"\(os error (\d+)\)", str(e))
    return OSError(int(match.group(1)), os.strerror(int(match.group(1)))) if match else None


def describe_os_error(e: OSError, args) -> str:
    if e.filename is not None:
        return f"{e.strerror or e}: {e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    outputs = [str(v) for name in OUTPUT_ARGUMENTS if (v := getattr(args, name, None))]
    return f"{e.strerror or e}" + (f" (writing {', '.join(outputs)})" if outputs else "")


if __name__ == "__main__":
    sys.exit(main())
