from .common import add_adapter_argument, add_model_arguments, add_tensor_parallel_argument, load_model
from .types import nonnegative_float, nonnegative_int, positive_int, seed

HELP = "Evaluate a checkpoint on the paper's benchmarks (lm-evaluation-harness prompts and metrics)."


def add_arguments(p):
    add_model_arguments(p, keep_quantized=False)  # float32 by default, as lm-eval runs the reference
    add_adapter_argument(p)
    p.add_argument("--tasks", required=True,
                   help="comma-separated: arc_easy,arc_challenge,hellaswag,piqa,siqa,winogrande,openbookqa,"
                        "boolq,nq_open,triviaqa,mmlu,gsm8k,humaneval,mbpp,lambada; Section 5: crows_pairs,winogender,"
                        "truthfulqa_mc1,truthfulqa_mc2,truthfulqa_gen,realtoxicity, or the group section5")
    p.add_argument("--shots", type=nonnegative_int, default=None, help="few-shot examples (default: the task's: mmlu 5, "
                   "gsm8k 8, mbpp 3, others 0)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N items of each task (file order)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--data-dir", default=None, help="benchmark data (default: the asset cache)")
    p.add_argument("--output", default=None, help="write results JSON here")
    p.add_argument("--table", action="store_true", help="print markdown tables like the paper's Tables 3-4 (11-14 for Section 5)")
    p.add_argument("--log-samples", default=None, metavar="FILE", help="write one JSON line per item here")
    p.add_argument("--samples", type=positive_int, default=1, help="programs per problem for humaneval/mbpp (pass@k, k<=N)")
    p.add_argument("--temperature", type=nonnegative_float, default=None,
                   help="sampling temperature for --samples > 1 (default 0.8) and --maj-k (default 0.6)")
    p.add_argument("--maj-k", type=positive_int, default=1, help="gsm8k: also report maj@k over k samples")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="generation length (default: per task)")
    p.add_argument("--seed", type=seed, default=1234)
    p.add_argument("--resume", default=None, metavar="FILE.jsonl",
                   help="Section 5 tasks: journal of scored items; a rerun with it scores only the rest")
    p.add_argument("--judge", default=None, help="truthfulqa_gen: judge model (OpenAI-compatible URL or checkpoint)")
    p.add_argument("--judge-model-name", default=None, help="the endpoint's model to ask (default: its first)")
    p.add_argument("--judge-api-key-env", default=None, help="environment variable holding the judge's API key")
    p.add_argument("--toxicity-prompts", default=None, help="realtoxicity: JSONL prompts file (joins section5)")
    p.add_argument("--perspective", default=None, help="realtoxicity: Perspective-compatible comments:analyze URL")
    p.add_argument("--perspective-key-env", default=None, help="environment variable holding its API key")
    add_tensor_parallel_argument(p)


def run(args):
    import contextlib
    import io

    from ..atomic import check_apart, write_text
    from ..eval import evaluate
    from ..eval.report import samples_jsonl

    for out in (args.output, args.log_samples):
        if out:
            check_apart(out, [args.model, args.adapter, args.data_dir])
    model, main = args.model, True
    if args.tensor_parallel > 1:  # every rank runs the whole evaluation on its shard; rank 0 reports
        model = load_model(args)
        main = model.is_main
    with contextlib.nullcontext() if main else contextlib.redirect_stderr(io.StringIO()):
        report = evaluate(model, args.tasks.split(","), adapter=args.adapter, data_dir=args.data_dir,
                          shots=args.shots, limit=args.limit, batch_size=args.batch_size, samples=args.samples,
                          temperature=args.temperature, maj_k=args.maj_k, max_new_tokens=args.max_new_tokens,
                          device=args.device, dtype=args.dtype, seed=args.seed, progress=main, resume=args.resume,
                          threads=getattr(args, "threads", None),
                          judge=args.judge, judge_model=args.judge_model_name, judge_api_key_env=args.judge_api_key_env,
                          toxicity_prompts=args.toxicity_prompts, perspective=args.perspective,
                          perspective_key_env=args.perspective_key_env)
    if not main:
        return
    if args.output:
        write_text(args.output, report.to_json())
    if args.log_samples:
        write_text(args.log_samples, samples_jsonl(report.samples))
    if args.table:
        print(report.table())
    elif not args.output:
        print(report.to_json(), end="")
