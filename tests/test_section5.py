"""The paper's Section 5 tasks: the shipped data (hashes, counts), bad input, the per-item log-likelihoods of
CrowS-Pairs, WinoGender and TruthfulQA MC1/MC2 on SmolLM2-135M-Instruct against transformers' own loading of
the same GGUF (fp32), resuming from a journal, lm-eval's BLEU/ROUGE for truthfulqa_gen, and the Tables 12-14
layout."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

from llamalab.cli import main as cli_main
from llamalab.errors import LlamalabError
from llamalab.eval import LLM, evaluate_task, get_task, section5_data
from llamalab.eval.bias import CROWS_CATEGORIES
from llamalab.eval.resume import open_journal
from llamalab.eval.section5 import expand, tables
from llamalab.eval.tasks import build_items

# sha256 of the files as fetched from upstream (nyu-mll/crows-pairs 8aaac11, rudinger/winogender-schemas 1c7f8b4,
# TruthfulQA.csv)
UPSTREAM = {
    "crows_pairs_anonymized.csv": "dfb36986ce0502abbaf7055b9176da3d08d48e07df1251991b5dfbcbceab9d0c",
    "winogender_all_sentences.tsv": "bd69da16bf228cb8df63fd0843aec2d8b5c36a7f21bf8c7b168bcc83932556c8",
    "winogender_templates.tsv": "496f2e2dc77296bcebcdd8865a8dc5715ce22b772de9abb5f531d5b3114c48a0",
    "winogender_occupations_stats.tsv": "3f7f37c16381a70571356982ea7fe613ac700ad04a6d3b19b9f2be18248df567",
    "winogender_LICENSE": "22756588705091904ca7903df15eb7f6ed45a11a7eec0783567295e9502e9316",
    "TruthfulQA.csv": "99d6ae7755e3b435eade956068c9de7c0c474770344237aeb66b56519ba4b697",
}


# ------------------------------------------------------------------------------------------------ data

def test_shipped_files_are_the_upstream_files():
    for name, digest in UPSTREAM.items():
        assert hashlib.sha256((section5_data.DATA / name).read_bytes()).hexdigest() == digest, name
    assert {k: v for k, v in UPSTREAM.items() if k in section5_data.SHA256} == section5_data.SHA256
    assert (section5_data.DATA / "SOURCES").is_file()


def test_the_data_has_the_papers_counts():
    with open(section5_data.DATA / "TruthfulQA.csv", encoding="utf-8", newline="") as f:
        raw = list(csv.DictReader(f))
    assert len(raw) == 817
    assert all(r["Correct Answers"].strip(" ;") and r["Incorrect Answers"].strip(" ;") for r in raw)
    rows = section5_data.truthfulqa_rows()
    assert len(rows) == 817 and all(r["correct_answers"] and r["incorrect_answers"] for r in rows)
    docs, items = build_items(get_task("crows_pairs"), None)
    assert len(docs) == 1508 and {i.groups[0] for i in items} == set(CROWS_CATEGORIES)
    docs, items = build_items(get_task("winogender"), None)
    assert len(docs) == 720  # 120 templates x 3 pronoun genders x {participant, "someone"}
    for gender in ("female", "male", "neutral"):
        assert sum(gender in i.groups for i in items) == 240
    for g in ("gotcha_female", "gotcha_male"):  # the paper's gotcha accuracies are multiples of 1/120
        assert sum(g in i.groups for i in items) == 120
    for d in docs:
        assert f" {d['pronoun']} " in f" {d['sentence'].lower()} ".replace(".", " ").replace(",", " ")
    assert expand(["section5"]) == ["crows_pairs", "winogender", "truthfulqa_mc1", "truthfulqa_mc2", "truthfulqa_gen"]
    assert expand(["section5"], "p.jsonl")[-1] == "realtoxicity"


def test_damaged_data_files_are_one_clear_line(tmp_path, monkeypatch, capsys):
    good = (section5_data.DATA / "crows_pairs_anonymized.csv").read_bytes()
    wrong = tmp_path / "wrong.csv"
    wrong.write_bytes(good.replace(b"sent_more", b"sentence_a", 1))
    with pytest.raises(LlamalabError, match="lacks the column.*sent_more"):
        section5_data.crows_pairs_rows(wrong)
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(good[:2000] + "caf\u00e9".encode("latin-1") + good[2000:])
    with pytest.raises(LlamalabError, match="not UTF-8"):
        section5_data.crows_pairs_rows(latin)
    tqa = tmp_path / "TruthfulQA.csv"
    tqa.write_text("Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
                   "A,B,Why?,Because,Because,;,x\n", encoding="utf-8")
    with pytest.raises(LlamalabError, match="row 2: a question needs at least one correct and one incorrect"):
        section5_data.truthfulqa_rows(tqa)
    # an installed copy that was changed: the CLI says so in one line, before any model loads
    copy = tmp_path / "section5"
    copy.mkdir()
    for name in UPSTREAM:
        (copy / name).write_bytes((section5_data.DATA / name).read_bytes())
    (copy / "crows_pairs_anonymized.csv").write_bytes(good[:-100])
    monkeypatch.setattr(section5_data, "DATA", copy)
    assert cli_main(["eval", "--model", str(tmp_path / "none.gguf"), "--tasks", "crows_pairs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256 mismatch" in err[0] and "crows_pairs_anonymized.csv" in err[0]


# ------------------------------------------------------------------------------------ against transformers

@pytest.fixture(scope="module")
def llm(smollm2_fp32):
    ckpt = smollm2_fp32
    return LLM(ckpt.model, ckpt.tokenizer, batch_size=8, progress=False)


def hf_loglikelihoods(hf, requests):
    """transformers: log P(continuation | context) summed, with the context's own tokenization as its prefix
    (an empty context: the BOS, else EOS, token), one sequence at a time; fp32 log-softmax, as lm-eval's HF
    backend computes it."""
    import torch

    model, tok = hf
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out = []
    for context, continuation in requests:
        if context:
            ctx = tok(context, add_special_tokens=False)["input_ids"]
            whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
            assert whole[:len(ctx)] == ctx
        else:
            ctx, whole = [prefix], [prefix] + tok(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        out.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
    return out


def run_items(llm, name, indices):
    task = get_task(name)
    _, items = build_items(task, None)
    return task.run(llm, task, [items[i] for i in indices])


def test_crows_pairs_equals_transformers_per_item_and_per_category(llm, hf_smollm2):
    _, items = build_items(get_task("crows_pairs"), None)
    picks = []  # the first two pairs of each bias category
    for cat in CROWS_CATEGORIES:
        picks += [i for i, it in enumerate(items) if it.groups[0] == cat][:2]
    metrics, records = run_items(llm, "crows_pairs", picks)
    theirs = hf_loglikelihoods(hf_smollm2, [("", s) for i in picks for s in items[i].continuations])
    for k, rec in enumerate(records):
        assert rec["loglikelihoods"] == pytest.approx(theirs[2 * k:2 * k + 2], abs=1e-4)
    prefer = [float(theirs[2 * k] > theirs[2 * k + 1]) for k in range(len(picks))]
    for cat in CROWS_CATEGORIES:
        mine = [p for p, i in zip(prefer, picks) if items[i].groups[0] == cat]
        assert metrics[f"pct_stereotype_{cat}"] == sum(mine) / len(mine)
    assert metrics["pct_stereotype"] == sum(prefer) / len(prefer)


@pytest.mark.parametrize("name", ["truthfulqa_mc1", "truthfulqa_mc2"])
def test_truthfulqa_mc_equals_transformers(llm, hf_smollm2, name):
    picks = [0, 400]
    _, items = build_items(get_task(name), None)
    metrics, records = run_items(llm, name, picks)
    accs = []
    for i, rec in zip(picks, records):
        it = items[i]
        theirs = hf_loglikelihoods(hf_smollm2, list(zip(it.contexts, it.continuations)))
        assert rec["loglikelihoods"] == pytest.approx(theirs, abs=1e-4)
        if name == "truthfulqa_mc1":
            accs.append(float(np.argmax(theirs) == 0))
        else:
            p = np.exp(theirs) / np.exp(theirs).sum()
            accs.append(float(p[np.array(it.labels) == 1].sum()))
        # MC1: the same choice wins; MC2: a probability mass, as close as log-likelihoods within 1e-4 allow
        assert rec["acc"] == pytest.approx(accs[-1], abs=1e-12 if name == "truthfulqa_mc1" else 5e-5)
    assert metrics["acc"] == pytest.approx(sum(accs) / len(accs), abs=1e-12 if name == "truthfulqa_mc1" else 5e-5)


def test_winogender_scores_all_720_and_a_handful_equal_transformers(llm, hf_smollm2):
    _, items = build_items(get_task("winogender"), None)
    metrics, records = get_task("winogender").run(llm, get_task("winogender"), items)
    assert len(records) == 720
    for key in ("acc", "acc_female", "acc_male", "acc_neutral", "acc_gotcha_female", "acc_gotcha_male"):
        assert 0.0 <= metrics[key] <= 1.0
    for group in ("female", "male", "neutral"):
        mine = [r["acc"] for r in records if group in r["groups"]]
        assert len(mine) == 240 and metrics[f"acc_{group}"] == sum(mine) / 240
    for i in (0, 5, 130, 361, 719):
        it = items[i]
        theirs = hf_loglikelihoods(hf_smollm2, list(zip(it.contexts, it.continuations)))
        assert records[i]["loglikelihoods"] == pytest.approx(theirs, abs=1e-4)
        assert records[i]["acc"] == float(int(np.argmax(theirs)) == it.gold)


# ------------------------------------------------------------------------------------------------ resume

def test_a_partial_run_resumes_without_rescoring(llm, tmp_path, monkeypatch):
    path = tmp_path / "journal.jsonl"
    scored = []
    real = llm.loglikelihood

    def counting(requests, desc="loglikelihood"):
        scored.extend(requests)
        return real(requests, desc)

    monkeypatch.setattr(llm, "loglikelihood", counting)
    task = get_task("crows_pairs")
    with open_journal(path, "smollm2") as journal:
        first = evaluate_task(llm, task, None, limit=3, journal=journal)
    assert len(scored) == 6
    scored.clear()
    with open_journal(path, "smollm2") as journal:  # "killed" after 3 items: the rerun scores the other 2
        second = evaluate_task(llm, task, None, limit=5, journal=journal)
    assert len(scored) == 4 and {s for s in scored} <= {("", x) for r in second.samples[3:] for x in r["continuations"]}
    assert second.samples[:3] == first.samples
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 5 and json.loads(lines[0]) == {"task": "_run", "model": "smollm2"}
    with pytest.raises(LlamalabError, match="holds items scored for 'smollm2'"):
        open_journal(path, "another")


# ------------------------------------------------------------------------------------- generation metrics

def test_truthfulqa_gen_similarity_equals_lm_eval():
    from lm_eval.tasks.truthfulqa import utils as lm_utils

    from llamalab.eval.truthfulqa import SIMILARITY, gen_item, similarity

    docs = section5_data.truthfulqa_rows()
    completions = ["\nA: Nothing happens if you eat watermelon seeds.", " A: You grow watermelons in your stomach.",
                   "I have no comment.", ""]
    for doc, completion in zip([docs[0], docs[0], docs[5], docs[7]], completions):
        it = gen_item(doc)
        hf_doc = lm_utils.preprocess_function({"question": doc["question"], "correct_answers": doc["correct_answers"],
                                               "incorrect_answers": doc["incorrect_answers"]})
        assert hf_doc["correct_answers"] == it.correct and hf_doc["incorrect_answers"] == it.incorrect
        theirs = lm_utils.process_results_gen(hf_doc, [completion])
        mine = similarity(completion, it.correct, it.incorrect)
        for k in SIMILARITY:
            assert mine[k] == pytest.approx(float(theirs[k]), abs=1e-9), (completion, k)


def test_tables_lay_out_the_papers_rows():
    results = {"crows_pairs": {"pct_stereotype": 0.5, **{f"pct_stereotype_{c}": 0.25 for c in CROWS_CATEGORIES}},
               "winogender": {"acc": 0.6, "acc_female": 0.5, "acc_male": 0.7, "acc_neutral": 0.6,
                              "acc_gotcha_female": 0.4, "acc_gotcha_male": 0.3},
               "truthfulqa_mc1": {"acc": 0.25}, "truthfulqa_gen": {"truthful": 0.4, "truthful_informative": 0.2,
                                                                   "judged": 1.0}}
    text = tables(results, "m")
    assert "| Race/Color | 57.0 | 25.0 |" in text and "| Average | 66.6 | 50.0 |" in text
    assert "| his/him/he (*gotcha*) | 55.0 | 44.2 | 55.8 | 63.3 | 30.0 |" in text
    assert "| Truthful*Inf | 0.29 | 0.41 | 0.48 | 0.53 | 0.20 |" in text
    assert "| MC1 (not in the paper) | — | — | — | — | 0.25 |" in text


def test_flags_that_do_not_apply_are_one_line_before_the_model_loads(tmp_path, capsys):
    model = str(tmp_path / "none.gguf")  # never loaded: each mistake is caught first
    for extra, says in ((["--tasks", "arc_easy", "--resume", str(tmp_path / "j.jsonl")], "--resume journals"),
                        (["--tasks", "crows_pairs", "--judge", "http://127.0.0.1:9/v1"], "--judge applies to"),
                        (["--tasks", "realtoxicity"], "needs a prompts file"),
                        (["--tasks", "section5,realtoxicity", "--toxicity-prompts", str(tmp_path / "p.jsonl")],
                         "toxicity prompts file"),
                        (["--tasks", "no_such_task"], "unknown task")):
        assert cli_main(["eval", "--model", model, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], (extra, err)


def test_the_papers_numbers_fit_the_shipped_data():
    """Tables 12-13 as transcribed are counts over exactly the shipped items: each CrowS-Pairs percentage is
    k / (pairs in the category) to the paper's rounding, and their counts sum to the average over all 1,508
    pairs; each WinoGender accuracy is k / 720, k / 240 (a pronoun group) or k / 120 (a gotcha group)."""
    from llamalab.eval.section5 import TABLE12, TABLE13

    _, items = build_items(get_task("crows_pairs"), None)
    sizes = {c: sum(it.groups[0] == c for it in items) for c in CROWS_CATEGORIES}
    counts = {}
    for cat, n in sizes.items():
        ks = [k for k in range(n + 1) if round(100 * k / n, 1) == TABLE12[cat]]
        assert len(ks) == 1, cat
        counts[cat] = ks[0]
    assert round(100 * sum(counts.values()) / 1508, 1) == TABLE12["average"]
    for group, values in TABLE13.items():
        n = 720 if not group else 120 if group.startswith("gotcha") else 240
        for v in values:
            assert any(round(100 * k / n, 1) == v for k in range(n + 1)), (group, v)
