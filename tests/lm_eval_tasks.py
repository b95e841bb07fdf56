"""lm-evaluation-harness's stock tasks, pointed at the local benchmark files (no hub access needed).

`write_task_yamls(data_dir, out_dir)` writes one small YAML per task that `include`s the stock YAML
shipped inside the installed `lm_eval` and only swaps the data source for the local arrow file, so
`lm_eval --include_path out_dir --tasks local_arc_easy,...` evaluates the same items we do.
Used by the parity tests and the throughput bench (bench/eval.py); needs `lm-eval` installed.
"""

from __future__ import annotations

from pathlib import Path

# our task name → (stock YAML under lm_eval/tasks, dataset dir under hf_datasets, extra overrides)
STOCK = {
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc/ARC-Easy", {}),
    "arc_challenge": ("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge", {}),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag/none", {}),
    "piqa": ("piqa/piqa.yaml", "piqa/plain_text", {}),
    "siqa": ("siqa/siqa.yaml", "social_i_qa/none", {}),
    "winogrande": ("winogrande/default.yaml", "winogrande/winogrande_xl", {}),
    "openbookqa": ("openbookqa/openbookqa.yaml", "openbookqa/main", {}),
    # the local BoolQ is google/boolq (`answer` is a bool), the stock YAML reads super_glue's `label`
    "boolq": ("super_glue/boolq/default.yaml", "boolq/none", {"doc_to_target": "{{ 1 if answer else 0 }}"}),
}
PREFIX = "local_"


def write_task_yamls(data_dir, out_dir, tasks=None) -> dict[str, str]:
    """Write the YAMLs; returns our task name → lm-eval task name."""
    import lm_eval
    import yaml

    stock_root = Path(lm_eval.__file__).parent / "tasks"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {}
    for name in tasks or STOCK:
        stock, dataset, extra = STOCK[name]
        arrow = Path(data_dir) / "hf_datasets" / dataset / "validation" / "data-00000-of-00001.arrow"
        cfg = {"include": str(stock_root / stock), "task": PREFIX + name, "tag": [],
               "dataset_path": "arrow", "dataset_name": None,
               "dataset_kwargs": {"data_files": {"validation": str(arrow)}},
               "training_split": None, "validation_split": "validation", "test_split": None, **extra}
        (out_dir / f"{PREFIX}{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        names[name] = PREFIX + name
    return names
