from .types import positive_int

HELP = "Judge models' answers with a judge model (MT-bench style): pairwise in both orders, or graded 1-10."

EPILOG = """examples:
  llamalab generate --model base.gguf --input questions.jsonl --out base.jsonl
  llamalab generate --model base.gguf --adapter runs/ft/adapter --input questions.jsonl --out tuned.jsonl
  llamalab judge --answers base.jsonl tuned.jsonl --judge http://127.0.0.1:8000/v1 --out runs/judge
Writes OUT/judgments.jsonl (appended; a rerun asks only what is missing), OUT/report.json, OUT/ranking.png.
The question set shipped with llamalab (40 questions: writing, reasoning, coding, knowledge, advice) is the
default; its reference answers (--reference) are used for the reasoning and coding questions that have one."""


def add_arguments(p):
    import argparse

    from .backends import add_backend_arguments

    p.epilog, p.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("--questions", metavar="FILE", help="questions (JSONL: id, category, question); default: ours")
    p.add_argument("--answers", nargs="+", required=True, metavar="FILE",
                   help="answer files, one per model (JSONL: id, model, answer; `llamalab generate --input` writes them)")
    add_backend_arguments(p, "judge")
    p.add_argument("--out", required=True, metavar="DIR", help="judgments.jsonl, report.json, ranking.png")
    p.add_argument("--mode", choices=["pairwise", "single"], default="pairwise",
                   help="pairwise: which answer is better, asked in both orders (default); single: a grade 1-10")
    p.add_argument("--reference", metavar="FILE", help="reference answers (JSONL: id, reference) shown to the judge; "
                   "default with the default questions: ours")
    p.add_argument("--max-tokens", type=positive_int, default=512, metavar="N", help="longest judgment (default 512)")
    p.add_argument("--bootstrap", type=positive_int, default=1000, metavar="R", help="bootstrap rounds (default 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    import json
    from pathlib import Path

    from ..atomic import check_apart, write_text
    from ..judge import QUESTIONS, REFERENCES
    from ..judge.judging import judge, load_answers, load_questions, load_references
    from ..judge.report import plot, summarize, text_table
    from .backends import open_backend

    for name in ("judgments.jsonl", "report.json", "ranking.png"):
        check_apart(Path(args.out) / name, [args.questions, *args.answers, args.reference, args.judge])
    questions = load_questions(args.questions or QUESTIONS)  # bad files fail before the judge loads
    answers = load_answers(args.answers, questions)
    reference = args.reference or (None if args.questions else REFERENCES)
    references = load_references(reference, questions) if reference else {}
    judge_model = open_backend(args, args.judge)
    judgments = judge(judge_model, questions, answers, args.out, mode=args.mode, references=references,
                      max_tokens=args.max_tokens, progress=not args.no_progress)
    report = summarize(judgments, list(answers), args.mode, judge=judge_model.name, rounds=args.bootstrap)
    out = Path(args.out)
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    plot(report, out / "ranking.png")
    print(text_table(report))
    m = report["malformed"]
    print(f"\n{report['judgments']} judgments; malformed replies: {m['retried']} retried, "
          f"{m['unusable after retry']} still unusable (left out)")
    if args.mode == "pairwise":
        agree = report["order_agreement"]
        print(f"both orders agreed on {agree['consistent']} of {agree['consistent'] + agree['inconsistent']} "
              f"comparisons (the rest count as ties)")
    print(f"  report {out / 'report.json'}\n  plot   {out / 'ranking.png'}")
