"""lm-evaluation-harness's stock Section 5 tasks pointed at the data llamalab ships (no hub access needed).

`write_section5_yamls(out_dir)` writes, per task, a small YAML that `include`s the stock YAML inside the
installed `lm_eval` and swaps only the data source: `crows_pairs_english` reads the shipped CrowS-Pairs CSV
as is; `winogender_all`, `truthfulqa_mc1/mc2` and `truthfulqa_gen` read JSON Lines written here from the
shipped files in the fields the HF datasets have (the MC targets built as llamalab builds them, see
`llamalab.eval.truthfulqa`). Used by the parity tests and bench/section5.py; needs `lm-eval` installed.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamalab.eval import section5_data
from llamalab.eval.bias import winogender_docs
from llamalab.eval.truthfulqa import mc_choices

PREFIX = "local_"


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_section5_yamls(out_dir, tasks=None, max_gen_toks: int = 32) -> dict[str, str]:
    """Write the YAMLs (and JSONL data files); returns our task name → lm-eval task name."""
    import lm_eval
    import yaml

    stock = Path(lm_eval.__file__).parent / "tasks"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tqa = section5_data.truthfulqa_rows()
    mc = [{"question": d["question"],
           **{f"mc{k}_targets": dict(zip(("choices", "labels"), mc_choices(d, k))) for k in (1, 2)}} for d in tqa]
    gen = [{"question": d["question"], "correct_answers": d["correct_answers"],
            "incorrect_answers": d["incorrect_answers"]} for d in tqa]
    wino = [{k: d[k] for k in ("sentence", "pronoun", "occupation", "participant", "label", "gender")}
            for d in winogender_docs()]
    split = {"training_split": None, "validation_split": None, "test_split": None, "tag": []}
    configs = {
        "crows_pairs": ("crows_pairs/crows_pairs_english.yaml", "csv", "test",
                        str(section5_data.DATA / "crows_pairs_anonymized.csv"), {}),
        "winogender": ("winogender/winogender.yaml", "json", "test", _jsonl(out / "winogender.jsonl", wino), {}),
        "truthfulqa_mc1": ("truthfulqa/truthfulqa_mc1.yaml", "json", "validation", _jsonl(out / "mc.jsonl", mc), {}),
        "truthfulqa_mc2": ("truthfulqa/truthfulqa_mc2.yaml", "json", "validation", str(out / "mc.jsonl"), {}),
        "truthfulqa_gen": ("truthfulqa/truthfulqa_gen.yaml", "json", "validation", _jsonl(out / "gen.jsonl", gen),
                           {"generation_kwargs": {"until": ["\n\n"], "do_sample": False, "max_gen_toks": max_gen_toks}}),
    }
    names = {}
    for name in tasks or configs:
        yml, kind, which, data, extra = configs[name]
        cfg = {"include": str(stock / yml), "task": PREFIX + name, **split, "dataset_path": kind,
               "dataset_name": None, "dataset_kwargs": {"data_files": {which: data}}, f"{which}_split": which, **extra}
        (out / f"{PREFIX}{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        names[name] = PREFIX + name
    return names
