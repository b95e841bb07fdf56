"""Section 5 parity with lm-evaluation-harness 0.4.x: its stock crows_pairs_english, winogender_all,
truthfulqa_mc1/mc2 and truthfulqa_gen configs on the shipped data (tests/lm_eval_section5.py), its HF backend
running transformers' own loading of the SmolLM2 GGUF (fp32), against our engine on the same first items."""

import os

import pytest

from llamalab.eval import LLM, evaluate_task, get_task
from lm_eval_section5 import write_section5_yamls

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
LIMIT = 4
METRIC = {"crows_pairs": "pct_stereotype", "winogender": "acc", "truthfulqa_mc1": "acc", "truthfulqa_mc2": "acc"}


@pytest.fixture(scope="module")
def setup(hf_smollm2, smollm2_fp32, tmp_path_factory):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tmp = tmp_path_factory.mktemp("lm_eval_s5")
    model, tok = hf_smollm2  # lm-eval's HF backend takes transformers' model as loaded (no save and reload)
    names = write_section5_yamls(tmp / "tasks")
    tm = TaskManager(include_path=str(tmp / "tasks"), include_defaults=False)  # ours: they include stock YAMLs
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=8)  # float32, on the CPU, as loaded
    out = lm_eval.simple_evaluate(model=hf, tasks=list(names.values()), task_manager=tm, limit=LIMIT,
                                  log_samples=True, bootstrap_iters=0)
    ref = {ours: {"samples": out["samples"][theirs], "results": out["results"][theirs]}
           for ours, theirs in names.items()}
    ckpt = smollm2_fp32
    return LLM(ckpt.model, ckpt.tokenizer, batch_size=8, progress=False), names, ref


@pytest.mark.parametrize("task", list(METRIC))
def test_likelihood_tasks_equal_lm_eval(setup, task):
    llm, names, ref = setup
    ours = evaluate_task(llm, get_task(task), None, limit=LIMIT)
    theirs = {s["doc_id"]: s for s in ref[task]["samples"]}
    assert len(theirs) == ours.n == LIMIT
    for rec in ours.samples:
        s = theirs[rec["doc_id"]]
        assert [tuple(a) for a in s["arguments"]] == list(zip(rec["contexts"], rec["continuations"]))
        assert rec["loglikelihoods"] == pytest.approx([float(r[0]) for r in s["filtered_resps"]], abs=1e-4)
        assert rec[METRIC[task]] == pytest.approx(s[METRIC[task]], abs=5e-5)  # MC2: a mass from those
    exact = task != "truthfulqa_mc2"  # MC2 is a probability mass: as close as the log-likelihoods allow
    assert ours.metrics[METRIC[task]] == pytest.approx(ref[task]["results"][f"{METRIC[task]},none"],
                                                       abs=1e-12 if exact else 5e-5)


def test_truthfulqa_gen_prompts_and_scores_equal_lm_eval(setup):
    from llamalab.eval.truthfulqa import SIMILARITY, similarity

    llm, names, ref = setup
    ours = evaluate_task(llm, get_task("truthfulqa_gen"), None, limit=LIMIT, max_new_tokens=32)
    theirs = {s["doc_id"]: s for s in ref["truthfulqa_gen"]["samples"]}
    for rec in ours.samples:
        s = theirs[rec["doc_id"]]
        assert s["arguments"][0][0] == rec["prompt"]
        assert set(s["arguments"][0][1]["until"]) >= set(get_task("truthfulqa_gen").until)
        generation = s["filtered_resps"][0]
        assert rec["generation"] == generation
        mine = similarity(generation, rec["targets"], rec["incorrect"])
        for k in SIMILARITY:
            assert mine[k] == pytest.approx(float(s[k]), abs=1e-9)
