"""Benchmarks of the paper (§3), read from the local data files and turned into requests exactly as
lm-evaluation-harness (0.4.x) builds them, so scores are comparable with published tables.

Each task is one of four kinds:
  MultipleChoice  — score every choice by log-likelihood (acc, acc_norm; acc_uncond where the paper uses it)
  Generate        — greedy decoding, then exact match (NQ, TriviaQA) or the answer number (GSM8K)
  Code            — sample programs, run the tests in a sandbox, pass@k (HumanEval, MBPP)
  Perplexity      — log-likelihood of one continuation (LAMBADA)

The data files: HF `save_to_disk` arrow streams under `hf_datasets/`, and `requests.jsonl.gz` files
whose `doc` field is the original record under `oe_eval_tasks/`.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..bounded import BoundedStream, loads
from ..errors import LlamalabError
from . import scoring
from .mbpp_prompts import MBPP_FEWSHOT

FETCH_HINT = "run `llamalab assets fetch` (or pass --data-dir DIR holding hf_datasets/ and oe_eval_tasks/)"


# ---------------------------------------------------------------------------------------------------
# reading the data files

def read_arrow(path: Path) -> list[dict]:
    import pyarrow.ipc as ipc

    if not path.is_file():
        raise LlamalabError(f"benchmark data file {path} is missing: {FETCH_HINT}")
    with open(path, "rb") as f:
        return ipc.open_stream(f).read_all().to_pylist()


def read_jsonl_gz(path: Path, key: str | None = "doc") -> list[dict]:
    if not path.is_file():
        raise LlamalabError(f"benchmark data file {path} is missing: {FETCH_HINT}")
    with gzip.open(path, "rb") as f:  # bounded: a --data-dir file is read as untrusted input
        rows = [loads(line) for line in BoundedStream(f, str(path)) if line.strip()]
    return [r[key] for r in rows] if key else rows


def hf_split(data_dir: Path, dataset: str, split: str = "validation") -> list[dict]:
    return read_arrow(Path(data_dir) / "hf_datasets" / dataset / split / "data-00000-of-00001.arrow")


# ---------------------------------------------------------------------------------------------------
# the four kinds of task

@dataclass
class ChoiceItem:
    """One multiple-choice question: request i scores `continuations[i]` after `contexts[i]`."""
    contexts: list[str]
    continuations: list[str]
    choices: list[str]   # what acc_norm divides by (lm-eval: the choice text, without the delimiter)
    gold: int


@dataclass
class GenerateItem:
    prompt: str
    targets: list[str]


@dataclass
class CodeItem:
    prompt: str
    prefix: str          # prepended to the completion to form the program
    tests: str           # appended to the program; it fails by raising


@dataclass
class PerplexityItem:
    context: str
    continuation: str


@dataclass
class Task:
    name: str
    kind: str                                   # "choice" | "generate" | "code" | "perplexity"
    docs: Callable[[Path], list[dict]]          # data dir → documents in file order
    item: Callable[..., object]                 # (doc, shots, fewshot_docs) → *Item
    default_shots: int = 0
    fewshot_docs: Callable[[Path], list[dict]] | None = None
    uncond: bool = False                        # also report the paper's "Answer:"-normalized accuracy
    until: tuple[str, ...] = ()
    max_new_tokens: int = 256
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    score: Callable[[str, GenerateItem], dict[str, float]] | None = None  # generate: (generation, item) → metrics
    # generate tasks with maj@k: (k sampled generations, item) → (the majority answer, 1.0 if it is right)
    majority: Callable[[list[str], GenerateItem], tuple[str, float]] | None = None
    # a task with its own scoring (Section 5): (llm, task, items, **options) → (metrics, per-item records)
    run: Callable[..., tuple[dict, list[dict]]] | None = None
    shipped: bool = False                       # its data ships with the package (no data dir needed)


def fewshot_prefix(examples: list[tuple[str, str]], description: str = "", target_delimiter: str = " ",
                   fewshot_delimiter: str = "\n\n") -> str:
    """lm-eval's plain-text few-shot context: description, then `q<delim>a<fewshot_delim>` per example."""
    return description + "".join(q + target_delimiter + a + fewshot_delimiter for q, a in examples)


def choice_item(context: str, choices: list[str], gold: int, delimiter: str = " ") -> ChoiceItem:
    return ChoiceItem([context] * len(choices), [delimiter + c for c in choices], list(choices), gold)


# ---------------------------------------------------------------------------------------------------
# common-sense reasoning (zero-shot)

def _arc(config: str) -> Task:
    def item(doc, shots=0, pool=()):
        gold = doc["choices"]["label"].index(doc["answerKey"])
        return choice_item(f"Question: {doc['question']}\nAnswer:", doc["choices"]["text"], gold)
    name = "arc_easy" if config == "ARC-Easy" else "arc_challenge"
    return Task(name, "choice", lambda d: hf_split(d, f"ai2_arc/{config}"), item)


def hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")   # WikiHow artifacts
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_item(doc, shots=0, pool=()):
    query = hellaswag_preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
    return choice_item(query, [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]))


def _piqa_item(doc, shots=0, pool=()):
    return choice_item(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def _siqa_item(doc, shots=0, pool=()):
    return choice_item(f"Q: {doc['context']} {doc['question']}\nA:",
                       [doc["answerA"], doc["answerB"], doc["answerC"]], int(doc["label"]) - 1)


def _winogrande_item(doc, shots=0, pool=()):
    """Partial scoring: the sentence up to the blank filled with each option is the context; the rest of
    the sentence is the one shared continuation."""
    i = doc["sentence"].index("_")
    contexts = [doc["sentence"][:i] + opt for opt in (doc["option1"], doc["option2"])]
    target = " " + doc["sentence"][i + 1:].strip()
    return ChoiceItem(contexts, [target] * 2, contexts, {"1": 0, "2": 1}[doc["answer"]])


def _openbookqa_item(doc, shots=0, pool=()):
    gold = doc["choices"]["label"].index(doc["answerKey"].lstrip())
    return choice_item(doc["question_stem"], doc["choices"]["text"], gold)


def _boolq_item(doc, shots=0, pool=()):
    return choice_item(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], int(doc["answer"]))


# ---------------------------------------------------------------------------------------------------
# MMLU (k-shot from the dev split, lm-eval's `mmlu` prompt)

def mmlu_subjects(data_dir: Path) -> list[str]:
    root = Path(data_dir) / "hf_datasets" / "hails" / "mmlu_no_train"
    if not root.is_dir():
        raise LlamalabError(f"MMLU data directory {root} is missing: {FETCH_HINT}")
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def _mmlu_docs(data_dir: Path, split: str) -> list[dict]:
    return [doc for s in mmlu_subjects(data_dir) for doc in hf_split(data_dir, f"hails/mmlu_no_train/{s}", split)]


def _mmlu_question(doc) -> str:
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def _mmlu_item(doc, shots=5, pool=()):
    subject = doc["subject"]
    examples = [(_mmlu_question(d), "ABCD"[d["answer"]]) for d in pool if d["subject"] == subject][:shots]
    description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return choice_item(fewshot_prefix(examples, description) + _mmlu_question(doc), list("ABCD"), doc["answer"])


# ---------------------------------------------------------------------------------------------------
# closed-book question answering (greedy, exact match)

def exact_match_score(regexes_to_ignore=()) -> Callable[[str, GenerateItem], dict[str, float]]:
    return lambda text, item: {"exact_match": scoring.exact_match(text, item.targets, regexes_to_ignore)}


def _nq_item(doc, shots=0, pool=()):
    examples = [(f"Q: {d['question']}?\nA:", d["answer"][0]) for d in pool[:shots]]
    prefix = "Answer these questions:\n\n" + fewshot_prefix(examples, fewshot_delimiter="\n")
    return GenerateItem(prefix + f"Q: {doc['question']}?\nA:", list(doc["answer"]))


def _triviaqa_item(doc, shots=0, pool=()):
    examples = [(f"Question: {d['question']}?\nAnswer:", d["answer"]["aliases"][0]) for d in pool[:shots]]
    return GenerateItem(fewshot_prefix(examples) + f"Question: {doc['question']}?\nAnswer:",
                        list(doc["answer"]["aliases"]))


# ---------------------------------------------------------------------------------------------------
# GSM8K, 8-shot chain of thought (lm-eval `gsm8k_cot`, the exemplars of Wei et al. 2022)

GSM8K_COT_EXEMPLARS = [
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
]


def _gsm8k_item(doc, shots=8, pool=()):
    examples = [(f"Q: {q}\nA:", a) for q, a in pool[:shots]]
    return GenerateItem(fewshot_prefix(examples) + f"Q: {doc['question']}\nA:",
                        [doc["answer"].split("####")[-1].strip()])


def _gsm8k_score(text: str, item: GenerateItem) -> dict[str, float]:
    """lm-eval's two filters: the strict "The answer is N" and the flexible last number in the text."""
    target = item.targets[0]
    return {"exact_match_strict": scoring.gsm8k_match(scoring.gsm8k_extract(text), target),
            "exact_match_flexible": scoring.gsm8k_match(scoring.gsm8k_extract(text, flexible=True), target)}


def _gsm8k_majority(samples: list[str], item: GenerateItem) -> tuple[str, float]:
    """maj@k (Minerva): the most common flexible answer among the samples."""
    answer = scoring.majority_vote([scoring.gsm8k_extract(s, flexible=True) for s in samples])
    return answer, scoring.gsm8k_match(answer, item.targets[0])


# ---------------------------------------------------------------------------------------------------
# code (pass@k in a sandbox)

def _humaneval_item(doc, shots=0, pool=()):
    return CodeItem(doc["prompt"], doc["prompt"], f"\n{doc['test']}\ncheck({doc['entry_point']})\n")


def _mbpp_question(doc) -> str:
    t = doc["test_list"]
    return (f"You are an expert Python programmer, and here is your task: {doc['text']} Your code should pass "
            f"these tests:\n\n{t[0]}\n{t[1]}\n{t[2]}\n[BEGIN]\n")


def _mbpp_item(doc, shots=3, pool=()):
    examples = [(_mbpp_question(d), d["code"] + "\n[DONE]") for d in pool[:shots]]
    setup = doc.get("test_setup_code") or ""
    return CodeItem(fewshot_prefix(examples, target_delimiter="") + _mbpp_question(doc), "",
                    "\n" + setup + "\n" + "\n".join(doc["test_list"]) + "\n")


def _mbpp_fewshot(data_dir: Path) -> list[dict]:
    return MBPP_FEWSHOT


# ---------------------------------------------------------------------------------------------------
# LAMBADA (OpenAI version): the last word given the passage

def _lambada_item(doc, shots=0, pool=()):
    return PerplexityItem(doc["query"], " " + doc["answers_text"][0])


# ---------------------------------------------------------------------------------------------------

def _oe(task: str, variant: str):
    return lambda d: read_jsonl_gz(Path(d) / "oe_eval_tasks" / task / variant / "requests.jsonl.gz")


def _human_eval(data_dir: Path) -> list[dict]:
    return read_jsonl_gz(Path(data_dir) / "human_eval" / "HumanEval.jsonl.gz", key=None)


TASKS: dict[str, Task] = {t.name: t for t in [
    _arc("ARC-Easy"),
    _arc("ARC-Challenge"),
    Task("hellaswag", "choice", lambda d: hf_split(d, "hellaswag/none"), _hellaswag_item),
    Task("piqa", "choice", lambda d: hf_split(d, "piqa/plain_text"), _piqa_item),
    Task("siqa", "choice", lambda d: hf_split(d, "social_i_qa/none"), _siqa_item, metrics=("acc",)),
    Task("winogrande", "choice", lambda d: hf_split(d, "winogrande/winogrande_xl"), _winogrande_item,
         metrics=("acc",)),
    Task("openbookqa", "choice", lambda d: hf_split(d, "openbookqa/main"), _openbookqa_item, uncond=True),
    Task("boolq", "choice", lambda d: hf_split(d, "boolq/none"), _boolq_item, uncond=True,
         metrics=("acc",)),
    Task("mmlu", "choice", lambda d: _mmlu_docs(d, "test"), _mmlu_item, default_shots=5,
         fewshot_docs=lambda d: _mmlu_docs(d, "dev"), metrics=("acc",)),
    Task("nq_open", "generate", lambda d: hf_split(d, "nq_open/none"), _nq_item,
         until=("\n", ".", ","), max_new_tokens=32, metrics=("exact_match",),
         score=exact_match_score((scoring.NQ_ARTICLES,))),
    Task("triviaqa", "generate", lambda d: hf_split(d, "trivia_qa/rc.wikipedia.nocontext"), _triviaqa_item,
         until=("\n", ".", ","), max_new_tokens=32, metrics=("exact_match",), score=exact_match_score()),
    Task("gsm8k", "generate", _oe("gsm8k", "gold_bpb_5shot"), _gsm8k_item, default_shots=8,
         fewshot_docs=lambda d: GSM8K_COT_EXEMPLARS, until=("Q:", "</s>", "<|im_end|>"), max_new_tokens=256,
         metrics=("exact_match", "maj@k"), score=_gsm8k_score, majority=_gsm8k_majority),
    Task("humaneval", "code", _human_eval, _humaneval_item,
         until=("\nclass", "\ndef", "\n#", "\nif", "\nprint"), max_new_tokens=512, metrics=("pass@1",)),
    Task("mbpp", "code", _oe("codex_mbpp", "gold_bpb_0shot"), _mbpp_item, default_shots=3,
         fewshot_docs=_mbpp_fewshot, until=("[DONE]",), max_new_tokens=512, metrics=("pass@1",)),
    Task("lambada", "perplexity", _oe("lambada", "bpb_0shot"), _lambada_item, metrics=("perplexity", "acc")),
]}
from .section5 import TASKS as SECTION5_TASKS  # noqa: E402 (built from the classes above)

TASKS.update(SECTION5_TASKS)
ALIASES = {"social_iqa": "siqa", "lambada_openai": "lambada", "gsm8k_cot": "gsm8k", "arc_e": "arc_easy",
           "arc_c": "arc_challenge", "crows_pairs_english": "crows_pairs", "winogender_all": "winogender"}


def get_task(name: str) -> Task:
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise LlamalabError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)} (groups: section5)")
    return TASKS[name]


def build_items(task: Task, data_dir: Path, shots: int | None = None, limit: int | None = None):
    """The task's documents (the first `limit` in file order) and one request item per document."""
    shots = task.default_shots if shots is None else shots
    docs = task.docs(None if data_dir is None else Path(data_dir))
    if limit is not None:
        docs = docs[:limit]
    pool = []
    if shots:
        if task.fewshot_docs is None:
            raise LlamalabError(f"task {task.name} has no few-shot split here; use --shots 0")
        pool = task.fewshot_docs(None if data_dir is None else Path(data_dir))
    return docs, [task.item(doc, shots, pool) for doc in docs]
