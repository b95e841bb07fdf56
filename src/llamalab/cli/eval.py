HELP = "Evaluate a checkpoint on the paper's benchmarks (lm-evaluation-harness prompts and metrics)."


def add_arguments(p):
    p.add_argument("--model", required=True, help="checkpoint: .gguf file, HF dir, Meta dir or hub id")
    p.add_argument("--tasks", required=True,
                   help="comma-separated: arc_easy,arc_challenge,hellaswag,piqa,siqa,winogrande,openbookqa,"
                        "boolq,nq_open,triviaqa,mmlu,gsm8k,humaneval,mbpp,lambada")
    p.add_argument("--shots", type=int, default=None, help="few-shot examples (default: the task's: mmlu 5, "
                   "gsm8k 8, mbpp 3, others 0)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N items of each task (file order)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data-dir", default=None, help="benchmark data (default: the asset cache)")
    p.add_argument("--output", default=None, help="write results JSON here")
    p.add_argument("--table", action="store_true", help="print a markdown table like the paper's Tables 3-4")
    p.add_argument("--log-samples", default=None, metavar="FILE", help="write one JSON line per item here")
    p.add_argument("--samples", type=int, default=1, help="programs per problem for humaneval/mbpp (pass@k, k<=N)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature for --samples > 1 (default 0.8) and --maj-k (default 0.6)")
    p.add_argument("--maj-k", type=int, default=1, help="gsm8k: also report maj@k over k samples")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default: per task)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=1234)


def run(args):
    import sys
    import time
    from pathlib import Path

    import torch

    from .. import assets
    from ..device import resolve_device
    from ..errors import LlamalabError
    from ..eval import LLM, evaluate_task, get_task
    from ..atomic import write_text
    from ..eval.report import markdown_table, samples_jsonl, to_json
    from ..formats import load

    tasks = [get_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise LlamalabError("--tasks is empty; name at least one task, e.g. --tasks arc_easy")
    for flag in ("limit", "batch_size", "samples", "maj_k"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise LlamalabError(f"--{flag.replace('_', '-')} must be at least 1, got {v}")
    data_dir = Path(args.data_dir) if args.data_dir else assets.path("benchmarks")
    if not data_dir.is_dir():
        raise LlamalabError(f"benchmark data directory {data_dir} does not exist: run `llamalab assets fetch`")
    for task in tasks:  # missing data files fail now, before the model loads
        task.docs(data_dir)
    device = str(resolve_device(args.device))
    ckpt = load(args.model, device=device, dtype=getattr(torch, args.dtype))
    if ckpt.tokenizer is None:
        raise LlamalabError(f"{args.model} has no tokenizer; evaluation needs one next to the weights")
    llm = LLM(ckpt.model, ckpt.tokenizer, batch_size=args.batch_size)

    results, all_samples, timing = {}, [], {}
    for task in tasks:
        start = time.perf_counter()
        r = evaluate_task(llm, task, data_dir, shots=args.shots, limit=args.limit, samples=args.samples,
                          temperature=args.temperature, maj_k=args.maj_k, max_new_tokens=args.max_new_tokens,
                          seed=args.seed)
        seconds = time.perf_counter() - start
        results[task.name] = r.metrics
        timing[task.name] = {"items": r.n, "seconds": round(seconds, 2)}
        all_samples += r.samples
        shown = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items() if not k.endswith("_stderr"))
        print(f"{task.name}: {shown}  ({r.n} items, {seconds:.1f}s, {r.n / seconds:.2f} items/s)", file=sys.stderr)

    config = {"model": str(args.model), "format": ckpt.format, "tasks": [t.name for t in tasks],
              "shots": args.shots, "limit": args.limit, "batch_size": args.batch_size, "device": device,
              "dtype": args.dtype, "samples": args.samples, "temperature": args.temperature,
              "maj_k": args.maj_k, "seed": args.seed, "timing": timing}
    if args.output:
        write_text(args.output, to_json(results, config))
    if args.log_samples:
        write_text(args.log_samples, samples_jsonl(all_samples))
    if args.table:
        print(markdown_table(results, Path(args.model).name))
    elif not args.output:
        print(to_json(results, config), end="")
