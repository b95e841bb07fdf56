"""Evaluation with the paper's protocol (§3), matching lm-evaluation-harness.

    from llamalab.eval import evaluate
    report = evaluate("SmolLM2-135M-Instruct.Q4_1.gguf", ["arc_easy", "hellaswag"], limit=100)
    print(report.table())

    from llamalab.eval import LLM, evaluate_task, get_task      # one task, with an engine you built
    result = evaluate_task(LLM(ckpt.model, ckpt.tokenizer), get_task("arc_easy"), data_dir, limit=100)
"""

from .harness import EvalReport, TaskResult, evaluate, evaluate_task
from .llm import LLM
from .tasks import TASKS, get_task

__all__ = ["LLM", "TASKS", "EvalReport", "TaskResult", "evaluate", "evaluate_task", "get_task"]
