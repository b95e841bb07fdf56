"""The paper's Section 5 — bias, toxicity and misinformation — as `llamalab eval` tasks, the `section5` group,
and the layout of the paper's Tables 11–14 with the paper's LLaMA numbers beside ours.

    llamalab eval MODEL --tasks section5 --table                 # CrowS-Pairs, WinoGender, TruthfulQA
    llamalab eval MODEL --tasks truthfulqa_gen --judge http://127.0.0.1:8000/v1
    llamalab eval MODEL --tasks realtoxicity --toxicity-prompts prompts.jsonl --perspective URL
"""

from __future__ import annotations

import dataclasses
import os

from ..errors import LlamalabError
from ..instruct.backends import open_model
from . import bias, toxicity, truthfulqa
from .toxicity import Perspective, read_prompts

TASKS = {t.name: t for t in [*bias.TASKS, *truthfulqa.TASKS, toxicity.TASK]}
GROUP = ["crows_pairs", "winogender", "truthfulqa_mc1", "truthfulqa_mc2", "truthfulqa_gen"]  # + realtoxicity
# when a prompts file is given

# The paper's numbers (Touvron et al. 2023, arXiv:2302.13971, Tables 11-14). Tables 12-13 are counts over
# the shipped items to the paper's rounding (tests/test_section5.py checks every one of them).
PAPER_SIZES = ("7B", "13B", "33B", "65B")
TABLE11 = {"Basic": (0.106, 0.104, 0.107, 0.128), "Respectful": (0.081, 0.095, 0.087, 0.141)}
TABLE12 = {"gender": 70.6, "religion": 79.0, "race-color": 57.0, "sexual-orientation": 81.0, "age": 70.1,
           "nationality": 64.2, "disability": 66.7, "physical-appearance": 77.8, "socioeconomic": 71.5,
           "average": 66.6}  # LLaMA-65B
TABLE13 = {"": (66.0, 64.7, 69.0, 77.5), "female": (65.0, 66.7, 66.7, 78.8), "male": (60.8, 62.5, 62.1, 72.1),
           "neutral": (72.1, 65.0, 78.3, 81.7), "gotcha_female": (64.2, 65.8, 61.7, 75.0),
           "gotcha_male": (55.0, 44.2, 55.8, 63.3)}
TABLE14 = {"truthful": (0.33, 0.47, 0.52, 0.57), "truthful_informative": (0.29, 0.41, 0.48, 0.53)}
WINOGENDER_ROWS = {"": "All", "female": "her/her/she", "male": "his/him/he", "neutral": "their/them/someone",
                   "gotcha_female": "her/her/she (*gotcha*)", "gotcha_male": "his/him/he (*gotcha*)"}


def expand(names: list[str], toxicity_prompts=None) -> list[str]:
    """Task names with the `section5` group spelled out (realtoxicity joins it when prompts are given)."""
    out = []
    for n in names:
        out += (GROUP + (["realtoxicity"] if toxicity_prompts else [])) if n == "section5" else [n]
    return list(dict.fromkeys(out))


def prepare(tasks, *, judge=None, judge_model=None, judge_api_key_env=None, perspective=None,
            perspective_key_env=None, toxicity_prompts=None) -> tuple[list, dict, dict]:
    """(tasks, options for the task runners, what goes in the report's config). Everything that can be
    wrong — a missing prompts file, a judge or an endpoint that is not there — fails here, before any
    model loads."""
    names = {t.name for t in tasks}
    options, config = {}, {}
    if "realtoxicity" in names:
        prompts = read_prompts(toxicity_prompts)
        tasks = [dataclasses.replace(t, docs=lambda d: prompts) if t.name == "realtoxicity" else t for t in tasks]
        if not perspective:
            raise LlamalabError("realtoxicity needs --perspective URL (a Perspective-compatible comments:analyze "
                                "endpoint)")
        options["perspective"] = Perspective(perspective, _key(perspective_key_env))
        config.update(perspective=perspective, toxicity_prompts=str(toxicity_prompts))
    if judge:
        if "truthfulqa_gen" not in names:
            raise LlamalabError("--judge applies to truthfulqa_gen; add it to --tasks (or use --tasks section5)")
        options["judge"] = open_model(judge, api_key=_key(judge_api_key_env), model=judge_model)
        config.update(judge=options["judge"].name, judge_prompts=truthfulqa.JUDGE_PROMPTS)
    return tasks, options, config


def _key(env: str | None) -> str | None:
    if env is None:
        return None
    if not os.environ.get(env):
        raise LlamalabError(f"environment variable {env} (named by --*-key-env) is not set")
    return os.environ[env]


# ------------------------------------------------------------------------------------------- the tables

def _pct(metrics: dict, key: str, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * metrics[key]:.{digits}f}" if key in metrics else "—"


def tables(results: dict[str, dict[str, float]], model: str = "ours") -> str:
    """The paper's Tables 11-14, for the Section 5 tasks in `results`, the paper's LLaMA columns first."""
    out = []
    sizes = " | ".join(f"LLaMA {s}" for s in PAPER_SIZES)
    if "realtoxicity" in results:
        r = results["realtoxicity"]
        rows = [f"| {name} | " + " | ".join(f"{v:.3f}" for v in TABLE11[name]) + f" | {_pct(r, key, 1.0, 3)} |"
                for name, key in (("Basic", "toxicity_basic"), ("Respectful", "toxicity_respectful"))]
        out.append(["Table 11 — RealToxicityPrompts, mean toxicity", f"| | {sizes} | {model} |",
                    "|---|" + "---:|" * 5, *rows])
    if "crows_pairs" in results:
        r = results["crows_pairs"]
        rows = [f"| {label} | {TABLE12[cat]:.1f} | {_pct(r, f'pct_stereotype_{cat}')} |"
                for cat, label in bias.CROWS_CATEGORIES.items()]
        rows.append(f"| Average | {TABLE12['average']:.1f} | {_pct(r, 'pct_stereotype')} |")
        out.append(["Table 12 — CrowS-Pairs, % preferring the stereotype (lower is less biased)",
                    f"| | LLaMA 65B | {model} |", "|---|---:|---:|", *rows])
    if "winogender" in results:
        r = results["winogender"]
        rows = [f"| {label} | " + " | ".join(f"{v:.1f}" for v in TABLE13[g]) +
                f" | {_pct(r, f'acc_{g}' if g else 'acc')} |" for g, label in WINOGENDER_ROWS.items()]
        out.append(["Table 13 — WinoGender, co-reference accuracy (%)", f"| | {sizes} | {model} |",
                    "|---|" + "---:|" * 5, *rows])
    truth = {k: results[k] for k in ("truthfulqa_gen", "truthfulqa_mc1", "truthfulqa_mc2") if k in results}
    if truth:
        gen = truth.get("truthfulqa_gen", {})
        rows = [f"| {label} | " + " | ".join(f"{v:.2f}" for v in TABLE14[key]) + f" | {_pct(gen, key, 1.0, 2)} |"
                for key, label in (("truthful", "Truthful"), ("truthful_informative", "Truthful*Inf"))]
        rows += [f"| {label} (not in the paper) | — | — | — | — | {_pct(truth[t], 'acc', 1.0, 2)} |"
                 for t, label in (("truthfulqa_mc1", "MC1"), ("truthfulqa_mc2", "MC2")) if t in truth]
        if "judged" in gen:
            rows.append(f"| judged answers | | | | | {_pct(gen, 'judged', 1.0, 2)} |")
        out.append(["Table 14 — TruthfulQA, fraction of answers", f"| | {sizes} | {model} |",
                    "|---|" + "---:|" * 5, *rows])
    return "\n\n".join("\n".join(t) for t in out) + ("\n" if out else "")
