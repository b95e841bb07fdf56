"""Run one benchmark task with an engine (`LLM`) and score it: metrics plus one record per item."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from . import scoring
from .tasks import ChoiceItem, CodeItem, GenerateItem, PerplexityItem, Task, build_items


@dataclass
class TaskResult:
    name: str
    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)
    n: int = 0


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


def aggregate(per_item: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for k in per_item[0]:
        out[k], out[f"{k}_stderr"] = mean_and_stderr([d[k] for d in per_item])
    return out


def evaluate_task(llm, task: Task, data_dir: Path, *, shots: int | None = None, limit: int | None = None,
                  samples: int = 1, temperature: float | None = None, top_p: float | None = 0.95,
                  maj_k: int = 1, max_new_tokens: int | None = None, seed: int = 1234,
                  timeout: float = 10.0) -> TaskResult:
    docs, items = build_items(task, data_dir, shots, limit)
    if not items:
        raise ValueError(f"task {task.name}: no items")
    run = {"choice": _choice, "generate": _generate, "code": _code, "perplexity": _perplexity}[task.kind]
    opts = dict(samples=samples, temperature=temperature, top_p=top_p, maj_k=maj_k, seed=seed, timeout=timeout,
                max_new_tokens=max_new_tokens or task.max_new_tokens)
    metrics, records = run(llm, task, items, **opts)
    for i, (doc, rec) in enumerate(zip(docs, records)):
        rec.update(doc_id=i, task=task.name)
    return TaskResult(task.name, metrics, records, len(items))


def _choice(llm, task: Task, items: list[ChoiceItem], **_):
    requests = [(c, x) for it in items for c, x in zip(it.contexts, it.continuations)]
    if task.uncond:
        requests += [(scoring.UNCOND_CONTEXT, x) for it in items for x in it.continuations]
    results = llm.loglikelihood(requests, desc=task.name)
    lls = [r[0] for r in results]
    per_item, records, at = [], [], 0
    offset_uncond = sum(len(it.continuations) for it in items)
    for it in items:
        n = len(it.continuations)
        ll = lls[at:at + n]
        uncond = lls[offset_uncond + at:offset_uncond + at + n] if task.uncond else None
        m = scoring.choice_metrics(ll, it.choices, it.gold, uncond)
        m = {k: v for k, v in m.items() if k in task.metrics or k == "acc_uncond"}
        per_item.append(m)
        records.append({"contexts": it.contexts, "continuations": it.continuations, "gold": it.gold,
                        "loglikelihoods": ll, "uncond_loglikelihoods": uncond, **m})
        at += n
    return aggregate(per_item), records


def _generate(llm, task: Task, items: list[GenerateItem], *, max_new_tokens, maj_k, temperature, top_p,
              seed, **_):
    prompts = [it.prompt for it in items]
    greedy = llm.generate(prompts, until=task.until, max_new_tokens=max_new_tokens, desc=task.name)
    per_item, records = [], []
    if task.name == "gsm8k":
        votes = [[] for _ in items]
        if maj_k > 1:  # maj@k: k samples per problem (Minerva: temperature 0.6), majority of the answers
            t = 0.6 if temperature is None else temperature
            sampled = llm.generate([p for p in prompts for _ in range(maj_k)], until=task.until,
                                   max_new_tokens=max_new_tokens, temperature=t, top_p=top_p, seed=seed,
                                   desc=f"{task.name} maj@{maj_k}")
            votes = [sampled[i * maj_k:(i + 1) * maj_k] for i in range(len(items))]
        for it, text, vs in zip(items, greedy, votes):
            target = it.targets[0]
            strict, flexible = scoring.gsm8k_extract(text), scoring.gsm8k_extract(text, flexible=True)
            m = {"exact_match_strict": scoring.gsm8k_match(strict, target),
                 "exact_match_flexible": scoring.gsm8k_match(flexible, target)}
            rec = {"prompt": it.prompt, "generation": text, "target": target, "strict": strict,
                   "flexible": flexible}
            if vs:
                answer = scoring.majority_vote([scoring.gsm8k_extract(v, flexible=True) for v in vs])
                m[f"maj@{maj_k}"] = scoring.gsm8k_match(answer, target)
                rec.update(samples=vs, majority=answer)
            per_item.append(m)
            records.append({**rec, **m})
        return aggregate(per_item), records
    regexes = (scoring.NQ_ARTICLES,) if task.name == "nq_open" else ()
    for it, text in zip(items, greedy):
        m = {"exact_match": scoring.exact_match(text, it.targets, regexes_to_ignore=regexes)}
        per_item.append(m)
        records.append({"prompt": it.prompt, "generation": text, "targets": it.targets, **m})
    return aggregate(per_item), records


def _code(llm, task: Task, items: list[CodeItem], *, samples, temperature, top_p, max_new_tokens, seed,
          timeout, **_):
    """pass@k: `samples` programs per problem (greedy when 1; else sampled, temperature 0.8 by default),
    each run with its tests in the sandbox."""
    from .sandbox import mode, run_program

    mode()  # where the sandbox cannot run, say so before generating
    prompts = [it.prompt for it in items for _ in range(samples)]
    if samples == 1 and not temperature:
        texts = llm.generate(prompts, until=task.until, max_new_tokens=max_new_tokens, desc=task.name)
    else:
        texts = llm.generate(prompts, until=task.until, max_new_tokens=max_new_tokens,
                             temperature=0.8 if temperature is None else temperature, top_p=top_p, seed=seed,
                             desc=task.name)
    ks = [k for k in (1, 10, 100) if k <= samples]
    per_item, records = [], []
    for i, it in enumerate(items):
        completions = texts[i * samples:(i + 1) * samples]
        runs = [run_program(it.prefix + c + it.tests, timeout=timeout) for c in completions]
        c = sum(r.passed for r in runs)
        m = {f"pass@{k}": scoring.pass_at_k(samples, c, k) for k in ks}
        per_item.append(m)
        records.append({"prompt": it.prompt, "completions": completions, "statuses": [r.status for r in runs],
                        "errors": [r.stderr.strip().splitlines()[-1:] for r in runs], "passed": c, **m})
    return aggregate(per_item), records


def _perplexity(llm, task: Task, items: list[PerplexityItem], **_):
    results = llm.loglikelihood([(it.context, it.continuation) for it in items], desc=task.name)
    lls = [ll for ll, _ in results]
    acc = [{"acc": float(greedy)} for _, greedy in results]
    metrics = {"perplexity": scoring.perplexity(lls), **aggregate(acc)}
    records = [{"context": it.context, "continuation": it.continuation, "loglikelihood": ll, "acc": a["acc"]}
               for it, ll, a in zip(items, lls, acc)]
    return metrics, records
