"""The loop the issue closes, end to end on the real SmolLM2-135M-Instruct: a real `llamalab serve` process is the
teacher and the judge; self-instruct makes Alpaca pairs from the shipped seed tasks, `llamalab finetune` trains a
LoRA adapter on them, `llamalab generate --input` answers questions with the base and with the adapter, and
`llamalab judge` compares the two, pairwise in both orders.

Sizes kept small for a 2-core CI machine: 8 pairs (one round of 8 instruction requests, through the paper's
filters; the 50-pair runs, several rounds with generated tasks shown back, resuming, are tests/test_self_instruct.py's
on a scripted endpoint), 2 fine-tuning steps, 3 questions. --concurrency 8 matches the server's 8 batch slots
(--max-batch 8), for the judge too: its 6 judgments (and their retries) decode together.
SmolLM2-135M is a weak teacher and judge: the test checks that every stage runs on it and that every output
has the format the next stage reads, not the quality of the data or the verdicts.
"""

from __future__ import annotations

import json

import pytest

from llamalab.cli import main as cli_main
from llamalab.instruct import SEED_TASKS
from llamalab.judge import QUESTIONS
from llamalab.serve.process import ServerProcess

PAIRS = 8


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    s = ServerProcess(smollm2_gguf, "--max-batch", "8", "--context", "1024", "--no-ui",  # one thread: the server
                      log=tmp_path_factory.mktemp("serve") / "server.log",    # and this process share the cores
                      env={"OMP_NUM_THREADS": "1"})
    yield s
    assert s.stop() == 0, s.log()


def test_self_instruct_finetune_judge_on_a_real_server(server, smollm2_gguf, tmp_path, capsys):
    url = f"{server.url}/v1"
    pairs = tmp_path / "pairs.jsonl"
    assert cli_main(["self-instruct", "--teacher", url, "--out", str(pairs), "--n", str(PAIRS),
                     "--concurrency", "8", "--no-progress"]) == 0
    records = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert len(records) == PAIRS
    assert all(set(r) == {"instruction", "input", "output"} and r["instruction"] and r["output"] for r in records)
    assert len({r["instruction"] for r in records}) == PAIRS
    # the paper's filters, checked on the output with Google's rouge-score: no instruction is a near duplicate
    # (ROUGE-L F >= 0.7) of a seed task or of another one (F is symmetric), each has 3-150 words
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    seeds = [json.loads(x)["instruction"] for x in SEED_TASKS.read_text().splitlines()]
    for i, r in enumerate(records):
        others = seeds + [o["instruction"] for o in records[:i]]
        assert scorer.score_multi(others, r["instruction"])["rougeL"].fmeasure < 0.7, r
        assert 3 <= len(r["instruction"].split()) <= 150, r
    print(capsys.readouterr().out)

    run = tmp_path / "ft"
    assert cli_main(["finetune", "--model", str(smollm2_gguf), "--data", str(pairs), "--out", str(run),
                     "--lora-rank", "4", "--max-steps", "2", "--seq-len", "128", "--micro-batch-size", "2",
                     "--val-split", "0.25", "--samples", "0", "--progress", "false"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["format"] == "alpaca" and report["steps"] == 2

    questions = tmp_path / "questions.jsonl"  # one writing, one reasoning (with a reference), one coding question
    lines = {json.loads(x)["id"]: x for x in QUESTIONS.read_text().splitlines()}
    questions.write_text("".join(lines[q] + "\n" for q in ("writing-01", "reasoning-02", "coding-04")))
    answers = {}
    for name, extra in (("base", []), ("tuned", ["--adapter", str(run / "adapter")])):
        answers[name] = tmp_path / f"{name}.jsonl"
        assert cli_main(["generate", "--model", str(smollm2_gguf), *extra, "--input", str(questions),
                         "--out", str(answers[name]), "--name", name, "--max-new-tokens", "32"]) == 0
        got = [json.loads(x) for x in answers[name].read_text().splitlines()]
        assert [a["id"] for a in got] == ["writing-01", "reasoning-02", "coding-04"]
        assert all(a["model"] == name and a["answer"].strip() for a in got)

    out = tmp_path / "judge"
    assert cli_main(["judge", "--questions", str(questions), "--answers", str(answers["base"]), str(answers["tuned"]),
                     "--judge", url, "--out", str(out), "--max-tokens", "64", "--concurrency", "8", "--bootstrap", "100",
                     "--no-progress"]) == 0
    judgments = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    assert sorted((j["question_id"], tuple(j["models"])) for j in judgments) == sorted(
        (q, o) for q in ("writing-01", "reasoning-02", "coding-04") for o in (("base", "tuned"), ("tuned", "base")))
    assert all(j["verdict"] in ("A", "B", "C", None) and j["judgment"] for j in judgments)
    report = json.loads((out / "report.json").read_text())
    assert report["judgments"] == 6 and report["malformed"]["retried"] == sum(j["malformed"] for j in judgments)
    fights = report["battles"]
    assert fights == 3 - report["order_agreement"]["incomplete"]
    assert {r["model"] for r in report["ranking"]} == {"base", "tuned"}
    assert (out / "ranking.png").read_bytes()[:4] == b"\x89PNG"
    print(capsys.readouterr().out)
