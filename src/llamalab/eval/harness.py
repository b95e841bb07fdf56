"""Evaluating a checkpoint: `evaluate` runs benchmark tasks end to end; `evaluate_task` runs one task with
an engine (`LLM`) and scores it: metrics plus one record per item.

    report = evaluate("SmolLM2-135M-Instruct.Q4_1.gguf", ["arc_easy", "piqa"], limit=200)
    report.results["arc_easy"]["acc_norm"]; print(report.table())
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import assets
from ..errors import LlamalabError
from ..runtime import Runnable, load_runnable
from . import scoring, section5
from .llm import LLM
from .report import markdown_table, to_json
from .resume import open_journal
from .sandbox import mode as sandbox_mode, run_program
from .tasks import ChoiceItem, CodeItem, GenerateItem, PerplexityItem, Task, build_items, get_task


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


@dataclass
class EvalReport:
    results: dict[str, dict[str, float]]   # task → metrics
    samples: list[dict]                    # one record per item, each with its task and doc_id
    config: dict                           # what ran, and each task's items and seconds

    def to_json(self) -> str:
        """Results and config; for the Section 5 tasks every item's record too (to compare models item by item)."""
        return to_json(self.results, self.config, [r for r in self.samples if r.get("task") in section5.TASKS])

    def table(self) -> str:
        """Markdown tables laid out like the paper's Tables 3-4 and, for Section 5 tasks, Tables 11-14."""
        name = Path(str(self.config["model"])).name
        main = {k: v for k, v in self.results.items() if k not in section5.TASKS}
        return "\n".join(filter(None, [main and markdown_table(main, name), section5.tables(self.results, name)]))


def evaluate(model, tasks: list[str], *, adapter=None, data_dir=None, shots: int | None = None, limit: int | None = None,
             batch_size: int = 16, samples: int = 1, temperature: float | None = None, maj_k: int = 1,
             max_new_tokens: int | None = None, device=None, dtype: str = "float32", seed: int = 1234,
             progress: bool = True, threads: int | None = None, resume=None, **section5_options) -> EvalReport:
    """Evaluate `model` (a checkpoint path or hub id, or a `runtime.Runnable`) on benchmark `tasks` (names,
    see `tasks.TASKS`), with the LoRA `adapter` directory applied if given, with the data in `data_dir` (default:
    the asset cache). Everything a user can get
    wrong (task names, counts, missing data) fails before the model loads. One line per task goes to stderr.
    Section 5 tasks (`section5.prepare`): `judge`, `perspective`, `toxicity_prompts`...; `resume` names a
    journal file: items scored there are not scored again."""
    names = section5.expand([t.strip() for t in tasks if t.strip()], section5_options.get("toxicity_prompts"))
    tasks = [get_task(t) for t in names]
    if not tasks:
        raise LlamalabError("no tasks given; name at least one task, e.g. --tasks arc_easy")
    for name, v in (("limit", limit), ("batch_size", batch_size), ("samples", samples), ("maj_k", maj_k),
                    ("max_new_tokens", max_new_tokens)):
        if v is not None and v < 1:
            raise LlamalabError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    tasks, options, extra_config = section5.prepare(tasks, **section5_options)
    if resume:
        if not any(t.name in section5.TASKS for t in tasks):
            raise LlamalabError("--resume journals the Section 5 tasks (crows_pairs, winogender, truthfulqa_*, "
                                "realtoxicity); none is in --tasks")
        name = str(model.path if isinstance(model, Runnable) else model) + (f" + {adapter}" if adapter else "")
        options["journal"] = open_journal(resume, name)
    data_dir = Path(data_dir) if data_dir else (None if all(t.shipped for t in tasks) else assets.path("benchmarks"))
    if data_dir is not None and not data_dir.is_dir():
        raise LlamalabError(f"benchmark data directory {data_dir} does not exist: run `llamalab assets fetch`")
    for task in tasks:  # missing data files, or a code task where the sandbox cannot run, fail now
        task.docs(data_dir)
        if task.kind == "code":
            sandbox_mode()
    rt = model if isinstance(model, Runnable) else load_runnable(model, device=device, dtype=dtype, adapter=adapter,
                                                                           threads=threads)
    llm = LLM(rt.model, rt.tokenizer, batch_size=batch_size, progress=progress)
    results, records, timing = {}, [], {}
    for task in tasks:
        start = time.perf_counter()
        r = evaluate_task(llm, task, data_dir, shots=shots, limit=limit, samples=samples, temperature=temperature,
                          maj_k=maj_k, max_new_tokens=max_new_tokens, seed=seed, **options)
        seconds = time.perf_counter() - start
        results[task.name], timing[task.name] = r.metrics, {"items": r.n, "seconds": round(seconds, 2)}
        records += r.samples
        shown = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items() if not k.endswith("_stderr"))
        print(f"{task.name}: {shown}  ({r.n} items, {seconds:.1f}s, {r.n / seconds:.2f} items/s)", file=sys.stderr)
    config = {"model": str(rt.path if isinstance(model, Runnable) else model), "adapter": adapter and str(adapter),
              "format": rt.format,
              "tasks": [t.name for t in tasks], "shots": shots, "limit": limit, "batch_size": batch_size,
              "device": str(llm.device), "dtype": str(llm.dtype).removeprefix("torch."), "samples": samples,
              "temperature": temperature, "maj_k": maj_k, "seed": seed, "timing": timing, **extra_config}
    if options.get("journal"):
        options["journal"].close()
    return EvalReport(results, records, config)


def evaluate_task(llm, task: Task, data_dir: Path, *, shots: int | None = None, limit: int | None = None,
                  samples: int = 1, temperature: float | None = None, top_p: float | None = 0.95,
                  maj_k: int = 1, max_new_tokens: int | None = None, seed: int = 1234,
                  timeout: float = 10.0, **options) -> TaskResult:
    docs, items = build_items(task, data_dir, shots, limit)
    if not items:
        raise ValueError(f"task {task.name}: no items")
    run = task.run or {"choice": _choice, "generate": _generate, "code": _code, "perplexity": _perplexity}[task.kind]
    opts = dict(samples=samples, temperature=temperature, top_p=top_p, maj_k=maj_k, seed=seed, timeout=timeout,
                max_new_tokens=max_new_tokens or task.max_new_tokens, **options)
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
    """Greedy generations scored by the task; with maj@k (tasks that define `majority`), also k samples
    per problem (temperature 0.6 by default, as Minerva) and their majority answer."""
    prompts = [it.prompt for it in items]
    greedy = llm.generate(prompts, until=task.until, max_new_tokens=max_new_tokens, desc=task.name)
    votes = [[] for _ in items]
    if maj_k > 1 and task.majority is not None:
        sampled = llm.generate([p for p in prompts for _ in range(maj_k)], until=task.until,
                               max_new_tokens=max_new_tokens, temperature=0.6 if temperature is None else temperature,
                               top_p=top_p, seed=seed, desc=f"{task.name} maj@{maj_k}")
        votes = [sampled[i * maj_k:(i + 1) * maj_k] for i in range(len(items))]
    per_item, records = [], []
    for it, text, vs in zip(items, greedy, votes):
        m = task.score(text, it)
        rec = {"prompt": it.prompt, "generation": text, "targets": it.targets}
        if vs:
            answer, m[f"maj@{maj_k}"] = task.majority(vs, it)
            rec.update(samples=vs, majority=answer)
        per_item.append(m)
        records.append({**rec, **m})
    return aggregate(per_item), records


def _code(llm, task: Task, items: list[CodeItem], *, samples, temperature, top_p, max_new_tokens, seed,
          timeout, **_):
    """pass@k: `samples` programs per problem (greedy when 1; else sampled, temperature 0.8 by default),
    each run with its tests in the sandbox."""
    sandbox_mode()  # where the sandbox cannot run, say so before generating
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
