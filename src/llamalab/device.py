"""Devices: the default (the GPU when torch sees one, else the CPU), the one place a device name from
the user (`--device`, `device:` in a config) becomes a torch.device, and the C++ compiler that torch.compile
on CPU and our int8 kernel need."""

from __future__ import annotations

import os
import shutil

import torch

from .errors import LlamalabError


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """`None`/"auto" → the default device; anything else must name a device this machine and this PyTorch
    build have, or it is one clear error."""
    if name in (None, "", "auto"):
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise LlamalabError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if device.type == "mps":
        backend = torch.backends.mps
    if backend is None or not hasattr(backend, "is_available"):
        raise LlamalabError(f"device {name!r} is not supported; use cpu, cuda, cuda:N or mps")
    if not backend.is_available():
        built = device.type != "cuda" or torch.backends.cuda.is_built()
        raise LlamalabError(f"device {name!r} is not available: " + (
            "no such device is visible on this machine" if built else
            f"this PyTorch ({torch.__version__}) was built without CUDA") + "; use --device cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise LlamalabError(f"device {name!r} does not exist: this machine has {count} {device.type} device(s)")
    return device


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile on CPU would use (CXX, else g++, c++, clang++), if there is one."""
    return next(filter(None, map(shutil.which, (os.environ.get("CXX", "g++"), "c++", "clang++"))), None)


def has_cxx_compiler() -> bool:
    return cxx_compiler() is not None
