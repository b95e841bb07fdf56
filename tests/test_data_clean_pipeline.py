"""`llamalab data clean` end to end: real text (the demo corpus, benchmark passages) with injected duplicates,
foreign text and a leaked benchmark item; the same output for 1 and 2 workers and on a local Ray cluster;
resume; bad input; `data prepare` on the output."""

from __future__ import annotations

import gzip
import json
import lzma
import random
from pathlib import Path

import pytest

from llamalab.cli import main
from llamalab.data.corpus import CORPUS_DIR

FRENCH = ("La ville se trouve au bord du fleuve, entre les collines couvertes de vignes. Chaque automne, les "
          "habitants célèbrent les vendanges avec des chants, des repas partagés et une grande foire sur la place.\n\n"
          "Les enfants apprennent très tôt les noms des cépages et les gestes de la récolte. Le soir, on raconte "
          "les histoires des anciens qui ont planté les premières vignes sur ces pentes difficiles.\n\n"
          "Aujourd'hui, le vin de la région est connu bien au-delà des frontières, et les visiteurs viennent "
          "nombreux pour goûter les vins et marcher sur les sentiers qui traversent les coteaux.")


def corpus_docs(name, n, min_len=2000):
    rows = [json.loads(line) for line in lzma.open(CORPUS_DIR / f"{name}.jsonl.xz", "rt")]
    return [r for r in rows if len(r["text"]) >= min_len][:n]


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory, benchmarks_dir):
    """Three input files of real text plus what each stage must catch (known by construction)."""
    from llamalab.eval.tasks import TASKS

    root = tmp_path_factory.mktemp("mixed")
    prose, ref, qa = corpus_docs("prose", 12), corpus_docs("reference", 30, 500), corpus_docs("qa", 30, 400)
    rng = random.Random(0)
    words = prose[3]["text"].split()
    near = words[:]
    for i in rng.sample(range(len(words)), len(words) // 200):  # 0.5% of the words changed: Jaccard ≈ 0.97
        near[i] = "changed"
    near = "\n".join(" ".join(near[i:i + 9]) for i in range(0, len(near), 9))  # and re-wrapped: no line repeats
    question = TASKS["arc_easy"].docs(benchmarks_dir)[5]["question"]
    injected = [
        {"text": prose[5]["text"], "source": "exact copy"},
        {"text": near, "source": "near copy"},
        {"text": FRENCH, "source": "french"},
        {"text": prose[7]["text"] + "\n\n" + question, "source": "leak"},
    ]
    prose[7] = corpus_docs("prose", 13)[12]  # the leak's host text appears only in the leak
    files = {"prose.jsonl": prose, "reference.jsonl": ref + injected[:2], "qa.jsonl": qa + injected[2:]}
    for name, rows in files.items():
        (root / name).write_text("".join(json.dumps({**r, "n": i}) + "\n" for i, r in enumerate(rows)))
    return root


def prose_text(i):
    from llamalab.data.clean.lines import normalize_text

    return normalize_text(corpus_docs("prose", 12)[i]["text"])


def run_clean(inputs, out, *extra):
    return main(["data", "clean", "--input", *map(str, inputs), "--output", str(out), "--no-progress",
                 "--decontaminate-tasks", "arc_easy", *map(str, extra)])


def output_rows(out: Path):
    return {p.name: [json.loads(line) for line in gzip.open(p, "rt")] for p in sorted(out.glob("*.jsonl.gz"))}


@pytest.fixture(scope="module")
def cleaned(mixed_corpus, tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("out") / "clean"
    assert run_clean([mixed_corpus], out, "--workers", "2") == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LLAMALAB_CACHE", str(tmp_path_factory.mktemp("cache")))  # the 13-gram index is built fresh
    yield mp
    mp.undo()


def test_end_to_end_removes_what_was_injected(cleaned, capsys):
    report = json.loads((cleaned / "stats.json").read_text())
    rows = {r["stage"]: r for r in report["stages"]}
    assert [r["stage"] for r in report["stages"]] == ["normalize", "exact_dedup", "line_dedup", "language", "gopher",
                                                      "decontaminate", "near_dedup"]
    for a, b in zip(report["stages"], report["stages"][1:]):  # each stage gets what the one before kept
        assert a["docs_out"] == b["docs_in"] and a["bytes_out"] == b["bytes_in"]
    assert rows["language"]["dropped_other_language"] == 1  # the French page
    assert rows["decontaminate"]["benchmark_arc_easy"] == 1 and rows["decontaminate"]["dropped_contaminated"] == 1
    assert rows["exact_dedup"]["dropped_duplicate"] == 1
    assert rows["near_dedup"]["dropped_duplicate"] >= 1
    kept = [r for rows_ in output_rows(cleaned).values() for r in rows_]
    assert len(kept) == rows["near_dedup"]["docs_out"]
    by_source = {}
    for r in kept:
        by_source.setdefault(r["source"], []).append(r)
    assert "french" not in by_source and "leak" not in by_source
    original, copy = (prose_text(n) for n in (5, 3))
    assert sum(r["text"] == kept_text for r in kept for kept_text in [original]) == 1  # one of the two copies
    assert sum(r["source"] == "near copy" or r["text"] == copy for r in kept) == 1    # one of the near pair
    assert all(set(r) == {"text", "source", "n"} for r in kept)  # every input field kept


def test_same_output_with_one_and_two_workers(mixed_corpus, cleaned, tmp_path, monkeypatch_module):
    assert run_clean([mixed_corpus], tmp_path / "one", "--workers", "1") == 0
    assert output_rows(tmp_path / "one") == output_rows(cleaned)


def test_rerun_is_a_no_op_and_an_interrupted_run_resumes(mixed_corpus, tmp_path, capsys, monkeypatch_module):
    out = tmp_path / "c"
    args = ["--stages", "normalize,exact_dedup", "--keep-work"]
    assert run_clean([mixed_corpus], out, *args) == 0
    first = output_rows(out)
    assert run_clean([mixed_corpus], out, *args) == 0
    assert "already cleaned" in capsys.readouterr().out
    # as if the last pass had died after its task 0: drop the outputs and the other tasks' completions
    (out / "stats.json").unlink()
    for shard in out.glob("*.jsonl.gz"):
        shard.unlink()
    last = sorted((out / ".work" / "logs").iterdir())[-1]
    kept_log = last / "logs" / "task_00000.log"
    before = kept_log.stat().st_mtime_ns
    for done in (last / "completions").iterdir():
        if done.name != "00000":
            done.unlink()
    # task 0's shard was already moved out: rerunning must redo it, so mark it not done either
    (last / "completions" / "00000").unlink()
    assert run_clean([mixed_corpus], out, *args) == 0
    assert output_rows(out) == first
    first_pass_log = sorted((out / ".work" / "logs").iterdir())[0] / "logs" / "task_00000.log"
    assert first_pass_log.stat().st_mtime_ns < before  # earlier passes were not redone


def test_ray_executor_on_a_local_cluster(mixed_corpus, tmp_path, monkeypatch_module):
    args = ["--stages", "normalize,exact_dedup", "--workers", "2"]  # two passes and a find pass: kept small
    inputs = [mixed_corpus / "reference.jsonl", mixed_corpus / "qa.jsonl"]
    assert run_clean(inputs, tmp_path / "local", *args) == 0
    assert run_clean(inputs, tmp_path / "ray", *args, "--executor", "ray") == 0
    assert output_rows(tmp_path / "ray") == output_rows(tmp_path / "local")


def test_prepare_consumes_the_output(cleaned, tmp_path, llama_spm_gguf):
    assert main(["data", "prepare", "--source", f"web={cleaned}", "--tokenizer", str(llama_spm_gguf),
                 "--out", str(tmp_path / "data"), "--no-progress", "--workers", "1"]) == 0
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["sources"]["web"]["tokens"] > 10_000


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--stages", "normalize,teleport"], "unknown stage(s) teleport"),
    (["--stages", "quality"], "needs --quality-model"),
    (["--workers", "0"], "argument --workers: must be an integer >= 1, got 0"),
    (["--quality-model", "README.md"], "not a quality model"),
])
def test_bad_arguments_are_one_clear_error(mixed_corpus, tmp_path, capsys, args, message):
    assert run_clean([mixed_corpus], tmp_path / "o", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.startswith("llamalab data: error:")


def test_output_directory_of_other_files_is_refused(mixed_corpus, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert run_clean([mixed_corpus], tmp_path / "o") == 2
    assert "did not write" in capsys.readouterr().err
    assert run_clean([tmp_path / "missing"], tmp_path / "p") == 2


def test_train_quality_cli(tmp_path, capsys):
    good = corpus_docs("prose", 40, 500)
    (tmp_path / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    spam = [{"text": f"WIN {i} FREE PRIZES click here now!!! best deal cheap pills offer {i}"} for i in range(40)]
    (tmp_path / "spam.jsonl").write_text("".join(json.dumps(r) + "\n" for r in spam))
    assert main(["data", "train-quality", "--positive", str(tmp_path / "good.jsonl"), "--negative",
                 str(tmp_path / "spam.jsonl"), "--out", str(tmp_path / "q.npz")]) == 0
    assert "held-out accuracy 1.000" in capsys.readouterr().out


def test_missing_data_extra_is_one_clear_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "py3langid", None)  # as if `llamalab[data]` were not installed
    assert main(["data", "clean", "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'llamalab[data]'" in err
