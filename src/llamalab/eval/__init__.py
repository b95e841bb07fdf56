"""Evaluation with the paper's protocol (§3), matching lm-evaluation-harness.

    from llamalab.eval import LLM, evaluate_task, get_task
    llm = LLM(ckpt.model, ckpt.tokenizer)
    result = evaluate_task(llm, get_task("arc_easy"), data_dir, limit=100)
"""

from .evaluate import TaskResult, evaluate_task
from .tasks import TASKS, get_task

__all__ = ["LLM", "TASKS", "TaskResult", "evaluate_task", "get_task"]


def __getattr__(name):  # the model-facing part loads torch: only on use (the code sandbox runs without it)
    if name == "LLM":
        from .llm import LLM
        return LLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
