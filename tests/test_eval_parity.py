"""Parity with lm-evaluation-harness on a real checkpoint: SmolLM2-135M through our GGUF loader and
engine vs lm-eval 0.4.13's HF backend running transformers' own loading of the same GGUF (fp32), on the
same first items of each benchmark's local file. Also lm-eval driving our model through the adapter."""

import os

import pytest

from llamalab.eval import LLM, evaluate_task, get_task
from lm_eval_tasks import write_task_yamls

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande", "openbookqa"]
LIMIT = 8


@pytest.fixture(scope="module")
def setup(hf_smollm2, smollm2_fp32, benchmarks_dir, tmp_path_factory):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tmp = tmp_path_factory.mktemp("lm_eval")
    model, tok = hf_smollm2  # lm-eval's HF backend takes transformers' model as loaded (no save and reload)
    names = write_task_yamls(benchmarks_dir, tmp / "tasks", TASKS)
    tm = TaskManager(include_path=str(tmp / "tasks"), include_defaults=False)  # ours: they include stock YAMLs
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=8)  # float32, on the CPU, as loaded
    ref = lm_eval.simple_evaluate(model=hf, tasks=list(names.values()), task_manager=tm, limit=LIMIT,
                                  log_samples=True, bootstrap_iters=0)
    ckpt = smollm2_fp32
    llm = LLM(ckpt.model, ckpt.tokenizer, batch_size=8, progress=False)
    return llm, names, tm, ref


@pytest.mark.parametrize("task", TASKS)
def test_loglikelihoods_and_accuracy_equal_lm_eval_hf(setup, benchmarks_dir, task):
    llm, names, _, ref = setup
    ours = evaluate_task(llm, get_task(task), benchmarks_dir, limit=LIMIT)
    theirs = {s["doc_id"]: s for s in ref["samples"][names[task]]}
    assert len(theirs) == ours.n == LIMIT
    for rec in ours.samples:
        s = theirs[rec["doc_id"]]
        assert [tuple(a) for a in s["arguments"]] == list(zip(rec["contexts"], rec["continuations"]))
        their_lls = [float(r[0]) for r in s["filtered_resps"]]
        assert rec["loglikelihoods"] == pytest.approx(their_lls, abs=1e-3)
        for metric in ("acc", "acc_norm"):
            if metric in s:
                assert rec[metric] == s[metric], (task, rec["doc_id"], metric)
    for metric in ("acc", "acc_norm"):
        key = f"{metric},none"
        if key in ref["results"][names[task]]:
            assert ours.metrics[metric] == pytest.approx(ref["results"][names[task]][key], abs=1e-9)


def test_lm_eval_drives_our_model_through_the_adapter(setup):
    import lm_eval
    from llamalab.eval.lm_eval_adapter import LlamalabLM
    from lm_eval.api.registry import get_model

    llm, names, tm, ref = setup
    assert get_model("llamalab") is LlamalabLM
    tasks = [names["arc_easy"], names["winogrande"]]
    out = lm_eval.simple_evaluate(model=LlamalabLM(llm=llm), tasks=tasks, task_manager=tm, limit=LIMIT,
                                  log_samples=True, bootstrap_iters=0)
    for t in tasks:
        assert out["results"][t]["acc,none"] == ref["results"][t]["acc,none"]
        theirs = {s["doc_id"]: s for s in ref["samples"][t]}
        for s in out["samples"][t]:
            assert [float(r[0]) for r in s["filtered_resps"]] == pytest.approx(
                [float(r[0]) for r in theirs[s["doc_id"]]["filtered_resps"]], abs=1e-3)
