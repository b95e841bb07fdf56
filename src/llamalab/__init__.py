"""llamalab: the LLaMA paper (Touvron et al. 2023) end to end.

    import llamalab
    ckpt = llamalab.load("SmolLM2-135M-Instruct.Q4_1.gguf")   # GGUF, HF dir, Meta dir, or hub id
    ckpt.model, ckpt.args, ckpt.tokenizer
    rt = llamalab.load_runnable("SmolLM2-135M-Instruct.Q4_1.gguf")  # ready to run: tokenizer, template, engines
"""

from .config import PRESETS, ModelArgs, get_preset
from .errors import LlamalabError

__version__ = "0.1.0"
__all__ = ["ModelArgs", "PRESETS", "get_preset", "LlamalabError", "load", "load_runnable", "Transformer", "load_tokenizer"]


def __getattr__(name):  # torch-heavy names load lazily, so `llamalab --help` stays fast
    if name == "load":
        from .formats import load
        return load
    if name == "load_runnable":
        from .runtime import load_runnable
        return load_runnable
    if name == "Transformer":
        from .model import Transformer
        return Transformer
    if name == "load_tokenizer":
        from .tokenizer import load_tokenizer
        return load_tokenizer
    raise AttributeError(name)
