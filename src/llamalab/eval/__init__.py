"""Evaluation with the paper's protocol (§3), matching lm-evaluation-harness.

    from llamalab.eval import evaluate
    report = evaluate("SmolLM2-135M-Instruct.Q4_1.gguf", ["arc_easy", "hellaswag"], limit=100)
    print(report.table())

    from llamalab.eval import LLM, evaluate_task, get_task      # one task, with an engine you built
    result = evaluate_task(LLM(ckpt.model, ckpt.tokenizer), get_task("arc_easy"), data_dir, limit=100)
"""

from .tasks import TASKS, get_task

__all__ = ["LLM", "TASKS", "EvalReport", "TaskResult", "evaluate", "evaluate_task", "get_task"]

_LAZY = {"LLM": "llm", "EvalReport": "harness", "TaskResult": "harness", "evaluate": "harness",
         "evaluate_task": "harness"}


def __getattr__(name):  # the model-facing parts load torch: only on use (the code sandbox runs without it)
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
