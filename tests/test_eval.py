"""`llamalab eval`: prompts identical to lm-evaluation-harness's, scoring against independent formulas,
generation against transformers, GSM8K/HumanEval end to end, and the CLI."""

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from llamalab.cli import main as cli_main
from llamalab.config import ModelArgs
from llamalab.eval import LLM, evaluate_task, get_task
from llamalab.eval import scoring
from llamalab.eval.tasks import build_items
from llamalab.model import Transformer
from lm_eval_tasks import write_task_yamls
from tiny import random_state

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
N = 6


def lm_eval_requests(include_dir: Path, task_name: str, limit: int):
    """lm-eval 0.4's own request construction for the first `limit` docs: [(doc_id, arguments), ...]."""
    from lm_eval.tasks import TaskManager

    # only our YAMLs indexed: they `include` the stock ones by path (indexing lm-eval's thousands took seconds)
    task = TaskManager(include_path=str(include_dir), include_defaults=False).load_task_or_group([task_name])[
        task_name]
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return sorted(((i.doc_id, i.idx, i.arguments) for i in task.instances), key=lambda x: x[:2])


def _stock(rel: str) -> str:
    import lm_eval
    return str(Path(lm_eval.__file__).parent / "tasks" / rel)


def _json_task(tmp: Path, name: str, stock: str, docs: list[dict], **extra) -> None:
    data = tmp / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = {"include": _stock(stock), "task": name, "tag": [], "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {"test": str(data)}}, "training_split": None,
           "validation_split": None, "test_split": "test", **extra}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge", "hellaswag", "piqa", "siqa", "winogrande",
                                  "openbookqa", "boolq"])
def test_multiple_choice_requests_equal_lm_eval(task, benchmarks_dir, tmp_path):
    # reference: lm-eval 0.4.13's stock task YAML, fed the same local file
    names = write_task_yamls(benchmarks_dir, tmp_path, [task])
    theirs = [args for _, _, args in lm_eval_requests(tmp_path, names[task], N)]
    _, items = build_items(get_task(task), benchmarks_dir, limit=N)
    ours = [(c, x) for it in items for c, x in zip(it.contexts, it.continuations)]
    assert ours == theirs


def test_generation_prompts_equal_lm_eval(benchmarks_dir, tmp_path):
    # nq_open / triviaqa: stock YAMLs on the local arrow files; gsm8k_cot (8-shot CoT) and mmlu (5-shot
    # from dev) the same way; reference = lm-eval's own context strings
    hf = Path(benchmarks_dir) / "hf_datasets"
    for name, stock, ds in [("l_nq", "nq_open/nq_open.yaml", "nq_open/none"),
                            ("l_tqa", "triviaqa/default.yaml", "trivia_qa/rc.wikipedia.nocontext")]:
        cfg = {"include": _stock(stock), "task": name, "dataset_path": "arrow", "dataset_name": None,
               "dataset_kwargs": {"data_files": {"validation": str(hf / ds / "validation/data-00000-of-00001.arrow")}},
               "training_split": None, "validation_split": "validation", "test_split": None}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    mmlu = hf / "hails/mmlu_no_train/abstract_algebra"
    cfg = {"include": _stock("mmlu/default/mmlu_abstract_algebra.yaml"), "task": "l_mmlu", "tag": [],
           "dataset_path": "arrow", "dataset_name": None, "num_fewshot": 5,
           "dataset_kwargs": {"data_files": {"test": str(mmlu / "test/data-00000-of-00001.arrow"),
                                             "dev": str(mmlu / "dev/data-00000-of-00001.arrow")}}}
    (tmp_path / "l_mmlu.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    gsm_docs = get_task("gsm8k").docs(benchmarks_dir)[:N]
    _json_task(tmp_path, "l_gsm8k", "gsm8k/gsm8k-cot.yaml", [{"question": d["question"], "answer": d["answer"]}
                                                                   for d in gsm_docs])
    for ours_name, theirs_name in [("nq_open", "l_nq"), ("triviaqa", "l_tqa"), ("gsm8k", "l_gsm8k")]:
        theirs = [args[0] for _, _, args in lm_eval_requests(tmp_path, theirs_name, N)]
        _, items = build_items(get_task(ours_name), benchmarks_dir, limit=N)
        assert [it.prompt for it in items] == theirs, ours_name
    theirs = lm_eval_requests(tmp_path, "l_mmlu", N)
    _, items = build_items(get_task("mmlu"), benchmarks_dir, limit=N)   # abstract_algebra is the first subject
    assert [(c, x) for it in items for c, x in zip(it.contexts, it.continuations)] == [a for _, _, a in theirs]
    # gsm8k targets: lm-eval's doc_to_target is the number after ####
    assert [it.targets[0] for it in build_items(get_task("gsm8k"), benchmarks_dir, limit=N)[1]] == \
           [d["answer"].split("####")[-1].strip() for d in gsm_docs]


def test_pass_at_k_matches_the_combinatorial_definition():
    # reference: 1 - C(n-c, k) / C(n, k) in exact integer arithmetic (Chen et al. 2021, eq. 1)
    for n, c, k in [(10, 0, 1), (10, 3, 1), (10, 3, 5), (200, 17, 100), (5, 5, 5), (80, 1, 80), (7, 2, 6)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert scoring.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert scoring.pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_exact_match_agrees_with_lm_eval():
    from lm_eval.api.metrics import exact_match_hf_evaluate

    cases = [("The Eiffel Tower", "eiffel tower"), ("  Paris", "paris"), ("U.S.A.", "usa"), ("a cat", "dog"),
             ("An apple", "apple"), ("Sunset Blvd", "sunset blvd")]
    for pred, gold in cases:
        ref = exact_match_hf_evaluate([pred.strip()], [gold], ignore_case=True, ignore_punctuation=True,
                                      regexes_to_ignore=[scoring.NQ_ARTICLES])["exact_match"]
        assert scoring.exact_match(pred, [gold], regexes_to_ignore=(scoring.NQ_ARTICLES,)) == ref, pred
    # gsm8k: lm-eval's filters and normalization on a worked answer
    text = "She has 3 + 4 = 7 apples. Then 7 * 2 = 14. The answer is 14.\n\nQ: more"
    assert scoring.gsm8k_extract(text) == "14" and scoring.gsm8k_match("14", "14") == 1.0
    assert scoring.gsm8k_extract("so $1,234.") == "[invalid]"
    assert scoring.gsm8k_extract("so $1,234.", flexible=True) == "$1,234." and scoring.gsm8k_match("$1,234.", "1234")
    assert scoring.majority_vote(["3", "[invalid]", "5", "5", "3", "5"]) == "5"


def test_choice_metrics_agree_with_lm_eval_process_results(benchmarks_dir, tmp_path):
    # reference: lm-eval's ConfigurableTask.process_results on the same log-likelihoods
    from lm_eval.tasks import TaskManager

    names = write_task_yamls(benchmarks_dir, tmp_path, ["arc_easy"])
    task = TaskManager(include_path=str(tmp_path), include_defaults=False).load_task_or_group(
        [names["arc_easy"]])[names["arc_easy"]]
    docs = list(task.eval_docs)[:20]
    _, items = build_items(get_task("arc_easy"), benchmarks_dir, limit=20)
    gen = torch.Generator().manual_seed(0)
    for doc, it in zip(docs, items):
        lls = (-torch.rand(len(it.choices), generator=gen) * 30).tolist()
        ref = task.process_results(doc, [(ll, False) for ll in lls])
        ours = scoring.choice_metrics(lls, it.choices, it.gold)
        assert ours["acc"] == ref["acc"] and ours["acc_norm"] == ref["acc_norm"]
    # the paper's OpenBookQA/BoolQ normalization: conditional minus "Answer:"-unconditional
    assert scoring.choice_metrics([-1.0, -2.0], ["no", "yes"], 1, uncond_lls=[-0.5, -3.0])["acc_uncond"] == 1.0


@pytest.fixture(scope="module")
def smol(smollm2_fp32):
    return smollm2_fp32


def test_greedy_generation_equals_transformers(smol, hf_smollm2):
    # reference: transformers' greedy `generate` on the same GGUF, one prompt at a time (no padding);
    # ours runs both prompts in one left-padded batch
    model, tok = hf_smollm2
    prompts = ["Q: What is the capital of France?\nA:", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"]
    llm = LLM(smol.model, smol.tokenizer, batch_size=2, progress=False)
    ours = llm.generate(prompts, max_new_tokens=12)
    for p, o in zip(prompts, ours):
        ids = tok(p, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=smol.tokenizer.eos_id)
        assert o == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_gsm8k_and_humaneval_end_to_end(smol, benchmarks_dir):
    llm = LLM(smol.model, smol.tokenizer, batch_size=4, progress=False)
    # (8-shot by default; 2 shots here keep the prompt short on CPU)
    r = evaluate_task(llm, get_task("gsm8k"), benchmarks_dir, limit=2, shots=2, max_new_tokens=16, maj_k=2)
    assert r.n == 2 and set(r.metrics) >= {"exact_match_strict", "exact_match_flexible", "maj@2"}
    assert all(0 <= r.metrics[k] <= 1 for k in ("exact_match_strict", "exact_match_flexible", "maj@2"))
    assert r.samples[0]["prompt"].count("Q: ") == 3 and len(r.samples[0]["samples"]) == 2
    r = evaluate_task(llm, get_task("humaneval"), benchmarks_dir, limit=2, max_new_tokens=24, samples=2,
                      temperature=0.8)
    assert r.n == 2 and {"pass@1", "pass@1_stderr"} <= set(r.metrics) and 0 <= r.metrics["pass@1"] <= 1
    assert all(s in ("passed", "failed", "timeout") for rec in r.samples for s in rec["statuses"])
    # the harness itself: the canonical solution passes in the sandbox, an empty body fails
    from llamalab.eval.sandbox import run_program
    doc = get_task("humaneval").docs(benchmarks_dir)[0]
    it = get_task("humaneval").item(doc)
    assert run_program(it.prefix + doc["canonical_solution"] + it.tests).passed
    assert not run_program(it.prefix + "    pass\n" + it.tests).passed


def _cli(capsys, *args):
    """`llamalab eval ARGS` run by this process (no interpreter, torch and transformers to start again): its
    exit code and what it printed. An exception other than the one-line errors would fail the test here."""
    capsys.readouterr()
    code = cli_main(["eval", *args])
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_cli_missing_data_names_the_fetch_command(smollm2_gguf, tmp_path, capsys):
    r = _cli(capsys, "--model", str(smollm2_gguf), "--tasks", "arc_easy", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "llamalab assets fetch" in r.stderr and "Traceback" not in r.stderr
    r = _cli(capsys, "--model", str(smollm2_gguf), "--tasks", "no_such_task")
    assert r.returncode == 2 and "unknown task" in r.stderr


def test_cli_writes_results_samples_and_table(smollm2_gguf, tmp_path, capsys):
    out, log = tmp_path / "r.json", tmp_path / "s.jsonl"
    r = _cli(capsys, "--model", str(smollm2_gguf), "--tasks", "piqa,boolq", "--limit", "3", "--output", str(out),
             "--log-samples", str(log), "--table")
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"piqa", "boolq"} and doc["config"]["limit"] == 3
    assert {"acc", "acc_norm"} <= set(doc["results"]["piqa"]) and "acc_uncond" in doc["results"]["boolq"]
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 6 and lines[0]["task"] == "piqa" and len(lines[0]["loglikelihoods"]) == 2
    assert "| Model | BoolQ | PIQA |" in r.stdout


def test_packed_loglikelihoods_equal_one_request_at_a_time():
    """Prefix trees packed into rows (shared contexts; contexts that differ after a shared prefix, as in
    WinoGrande; continuations that share their first tokens, as in PIQA), truncation to max_length and batching
    change nothing: each request scores as lm-eval does it alone (one forward of the last max_length tokens of
    context + continuation)."""
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, max_seq_len=64)
    model = Transformer(args)
    model.load_state_dict(random_state(args), strict=False)
    model.tie_weights()
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(0, 50, (n,), generator=g).tolist()
    shared = ids(9)
    requests = [(shared, ids(n)) for n in (1, 3, 2, 5)] + [(ids(n), ids(m)) for n, m in [(3, 1), (12, 4), (30, 6)]]
    requests += [(shared, [int(model(torch.tensor([shared]))[0, -1].argmax())])]  # a greedy one
    blank, rest = ids(6), ids(4)
    requests += [(blank + ids(2), rest), (blank + ids(1), rest), (blank + ids(3), rest)]  # WinoGrande-like
    start = ids(3)
    requests += [(shared, start + ids(4)), (shared, start + ids(2))]                  # PIQA-like
    max_length = 20  # the (30, 6) request is left-truncated
    with torch.inference_mode():
        expected = []
        for ctx, cont in requests:
            window = (ctx + cont)[-(max_length + 1):][:-1]
            logp = torch.log_softmax(model(torch.tensor([window]))[0, -len(cont):], -1)
            t = torch.tensor(cont)
            expected.append((logp.gather(-1, t[:, None]).sum().item(), bool((logp.argmax(-1) == t).all())))
    tokenizer = SimpleNamespace(bos_id=None, eos_id=0)
    llm = LLM(model, tokenizer, batch_size=3, max_length=max_length, progress=False)
    keys = list(dict.fromkeys((tuple(c), tuple(x)) for c, x in requests))
    rows = llm.pack(keys)
    assert sum(len(r.tokens) for r in rows) < sum(len(llm.sequence(*k)) for k in keys) - 40  # it shares
    got = llm.loglikelihood_tokens(requests)
    assert [g for _, g in got] == [g for _, g in expected] and expected[7][1]
    assert [s for s, _ in got] == pytest.approx([s for s, _ in expected], abs=1e-4)
