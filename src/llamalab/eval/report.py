"""Results out: the JSON document, a markdown table laid out like the paper's Tables 3-4, per-sample JSONL.
The CLI writes each with `llamalab.atomic` (temporary name, then rename), so a crash never leaves half a file."""

from __future__ import annotations

import json

# Paper order: common-sense reasoning (Table 3), closed-book QA (Tables 4-5), MMLU, math, code.
TABLE_ORDER = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa",
               "nq_open", "triviaqa", "mmlu", "gsm8k", "humaneval", "mbpp", "lambada"]
HEADERS = {"boolq": "BoolQ", "piqa": "PIQA", "siqa": "SIQA", "hellaswag": "HellaSwag", "winogrande": "WinoGrande",
           "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA", "nq_open": "NQ",
           "triviaqa": "TriviaQA", "mmlu": "MMLU", "gsm8k": "GSM8K", "humaneval": "HumanEval", "mbpp": "MBPP",
           "lambada": "LAMBADA"}
# The number the paper reports for each task.
HEADLINE = {"hellaswag": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "piqa": "acc_norm",
            "openbookqa": "acc_uncond", "boolq": "acc_uncond", "nq_open": "exact_match",
            "triviaqa": "exact_match", "gsm8k": "exact_match_strict", "humaneval": "pass@1", "mbpp": "pass@1"}


def to_json(results: dict[str, dict[str, float]], config: dict, samples: list[dict] | None = None) -> str:
    """The report; `samples` (per-item records, given for the Section 5 tasks) go in too."""
    doc = {"results": results, "config": config, **({"samples": samples} if samples else {})}
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def headline(task: str, metrics: dict[str, float]) -> tuple[str, float]:
    key = HEADLINE.get(task, "acc")
    if key not in metrics:
        key = next(k for k in metrics if not k.endswith("_stderr"))
    return key, metrics[key]


def markdown_table(results: dict[str, dict[str, float]], model: str = "model") -> str:
    """One row per model, one column per task in the paper's order; values in percent (perplexity raw)."""
    tasks = [t for t in TABLE_ORDER if t in results] + [t for t in results if t not in TABLE_ORDER]
    cells = []
    for t in tasks:
        key, v = headline(t, results[t])
        cells.append(f"{v:.2f}" if key == "perplexity" else f"{100 * v:.1f}")
    head = "| Model | " + " | ".join(HEADERS.get(t, t) for t in tasks) + " |"
    sep = "|---|" + "---:|" * len(tasks)
    keys = ", ".join(f"{HEADERS.get(t, t)} {headline(t, results[t])[0]}" for t in tasks)
    return "\n".join([head, sep, f"| {model} | " + " | ".join(cells) + " |", "", f"Metrics: {keys}."]) + "\n"


def samples_jsonl(samples: list[dict]) -> str:
    return "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
