"""Argument types every subcommand shares: a number outside its range is one error line and exit code 2
(`llamalab CMD: error: argument --stride: must be an integer >= 1, got 0`), before anything is loaded.

    p.add_argument("--stride", type=positive_int)
    p.add_argument("--temperature", type=nonnegative_float)
    p.add_argument("--seed", type=seed)
"""

from __future__ import annotations

import argparse
import math

SEED_MAX = (1 << 63) - 1  # torch.Generator takes < 2**64; seed + i (one per question) must stay below it


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_at_least(low: int, high: int | None = None):
    """An integer in [low, high]."""
    def parse(text: str) -> int:
        value = _int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}" + (f" and <= {high}" if high else "")
                                             + f", got {text}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text}")
    return value


def finite_float(text: str) -> float:
    return _float(text)


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text}")
    return value


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `llamalab CMD: error: MESSAGE (see `PROG --help`)` (the
    prefix of every CLI error, also for `data clean`), exit code 2."""

    def error(self, message: str):
        command = " ".join(self.prog.split()[:2])
        self.exit(2, f"{command}: error: {message} (see `{self.prog} --help`)\n")
