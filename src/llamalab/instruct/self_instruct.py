"""Self-instruct (Wang et al. 2022), as Alpaca (Taori et al. 2023) used it to make its 52K examples: a teacher
model is shown a few tasks from a hand-written seed set and from what it already wrote, and asked for new
ones; the new tasks that pass the paper's filters are answered by the teacher and kept as Alpaca records.

    pairs = self_instruct(open_model(URL_OR_PATH), load_seed_tasks("seed.jsonl"), "pairs.jsonl", n=200)

Two requests per task, as in the self-instruct paper (instructions first, then instances), rather than
Alpaca's single prompt for instruction, input and output together: a small teacher writes a usable
numbered list of tasks and a usable answer far more often than the whole triple in one strict format.

Filters (self-instruct §2.3, Alpaca's `generate_instruction.py`): a new instruction is kept only if its
ROUGE-L F-measure (Google's `rouge-score`) against every instruction in the pool (seed + kept) is below 0.7;
it has 3–150 words; it names nothing a text model cannot see or make (image, graph, file, audio, ...); it does
not start with "Write a program" or with punctuation or a non-letter. Answers are asked for in fewer than
100 words, as Alpaca's prompt asks; an answer is dropped when it is empty, cut at the token limit, or a refusal.

The output is resumable: records are appended one fsync'd line at a time (`Journal`), a rerun continues
until the file holds `n` records and never rewrites what is there. A kill loses only the round in flight.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from ..errors import LlamalabError
from ..textio import read_records
from .backends import Request
from .journal import Journal

ROUGE_THRESHOLD = 0.7
MIN_WORDS, MAX_WORDS = 3, 150
# Alpaca's list: tasks about things a language model cannot see, hear or produce
BANNED = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
          "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
REFUSALS = ("as an ai", "as a language model", "i'm sorry", "i am sorry", "i cannot", "i can't", "i'm unable",
            "i am unable")
SEED_SHOWN, GENERATED_SHOWN = 4, 2  # examples per prompt (self-instruct: 6 + 2; a small teacher copies fewer)
ASK = 5  # new tasks asked for per prompt
# Alpaca's prompt asks for outputs "less than 100 words"; without it a small teacher rambles: on 32 SmolLM2-135M
# answers, 8 ran past 256 tokens (dropped) and the kept ones averaged 72 tokens; asked for brevity, none ran
# past and they averaged 57, so a kept pair costs a third of the decoded tokens
ANSWER_WORDS = 100
# each prompt names a topic, drawn at random: a small teacher otherwise copies the examples or drifts into the
# same few subjects, and the ROUGE-L filter then drops most of what it writes
TOPICS = ("cooking", "travel", "history", "physics", "biology", "health", "personal finance", "sports", "animals",
          "music", "school", "work and careers", "the weather", "geography", "grammar", "mathematics", "programming",
          "gardening", "family life", "art", "the ocean", "space", "cars", "books", "movies", "friendship",
          "shopping", "the environment", "technology", "chemistry", "holidays", "fitness", "pets", "language learning",
          "city life", "farming", "emails and letters", "puzzles", "economics", "philosophy")


def load_seed_tasks(path) -> list[dict]:
    """Alpaca records (instruction, optional input, output) from a JSON array or JSON Lines file."""
    tasks = []
    for where, r in read_records(path):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            raise LlamalabError(f"{where}: a seed task needs a non-empty string 'instruction' (Alpaca format: "
                                f"instruction, input, output)")
        for key in ("input", "output"):
            if not isinstance(r.get(key, ""), str):
                raise LlamalabError(f"{where}: {key!r} must be a string")
        tasks.append({"instruction": r["instruction"].strip(), "input": r.get("input", "").strip(),
                      "output": r.get("output", "").strip()})
    return tasks


# --------------------------------------------------------------------------------------------- prompts

def shown(task: dict) -> str:
    """A task on one line, its input (if any) quoted after the instruction."""
    text = task["instruction"]
    if task.get("input"):
        text = f'{text.rstrip(".:")}: "{task["input"]}"'
    return " ".join(text.split())


def instruction_request(examples: list[dict], topic: str, *, temperature: float, top_p: float, seed: int,
                        max_tokens: int = 200) -> Request:
    listed = "\n".join(f"{i}. {shown(t)}" for i, t in enumerate(examples, 1))
    prompt = (f"Here are examples of tasks that people give to an assistant:\n\n{listed}\n\n"
              f"Now write {ASK} new tasks in the same style. Every new task must be about {topic}, and different "
              f"from the examples. Number them 1 to {ASK}, one per line. Write only the tasks, not their answers.")
    return Request(({"role": "user", "content": prompt},), max_tokens=max_tokens, temperature=temperature,
                   top_p=top_p, seed=seed)


def answer_request(task: dict, *, temperature: float, seed: int, max_tokens: int) -> Request:
    content = task["instruction"] + (f"\n\n{task['input']}" if task.get("input") else "")
    content += f"\n\nAnswer in fewer than {ANSWER_WORDS} words."
    return Request(({"role": "user", "content": content},), max_tokens=max_tokens, temperature=temperature,
                   seed=seed)


ITEM = re.compile(r"^\s*(?:#{1,6}\s*)?(?:[-*•]\s*)?(?:\*\*)?\s*(?:(?:task|instruction|question)\s*)?\(?(\d{1,3})\s*"
                  r"(?:\)\s*[.:]?|[.:])\s*(?:\*\*)?\s*(.*)$", re.IGNORECASE)
LABEL = re.compile(r"^(?:\*\*)?\s*(?:new\s+)?(?:task|instruction|question)\s*(?:\d+)?\s*[:.-]\s*(?:\*\*)?\s*", re.IGNORECASE)


def parse_instructions(text: str) -> list[str]:
    """The tasks in a teacher's reply: numbered lines ("9. ...", "9) ...", "(9) ...", "**9.** ...", "* 9. ...",
    "Task 9: ..."),
    cleaned of Markdown, labels and quotes. A last item the token limit may have cut is the caller's call."""
    items = []
    for line in text.splitlines():
        m = ITEM.match(line)
        if not m:
            continue
        item = LABEL.sub("", m.group(2).strip())
        item = item.replace("**", "").strip()
        if len(item) > 1 and item[0] in '"“' and item[-1] in '"”':
            item = item[1:-1].strip()
        if item:
            items.append(" ".join(item.split()))
    return items


# --------------------------------------------------------------------------------------------- filters

class Pool:
    """The instructions so far (seed + kept), and the checks a new one must pass to join them."""

    def __init__(self, instructions: list[str]):
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.instructions = list(instructions)

    def rouge_l(self, instruction: str) -> float:
        """The highest ROUGE-L F-measure of `instruction` against the pool (0 for an empty pool)."""
        if not self.instructions:
            return 0.0
        return self.scorer.score_multi(self.instructions, instruction)["rougeL"].fmeasure

    def reject(self, instruction: str) -> str | None:
        """Why `instruction` may not join the pool, or None."""
        words = instruction.split()
        if not MIN_WORDS <= len(words) <= MAX_WORDS:
            return "length"
        lower = instruction.lower()
        if any(re.search(rf"\b{re.escape(k)}\b", lower) for k in BANNED):
            return "banned keyword"
        if lower.startswith("write a program") or not instruction[0].isascii() or not instruction[0].isalpha():
            return "form"
        if self.rouge_l(instruction) >= ROUGE_THRESHOLD:
            return "near duplicate"
        return None

    def add(self, instruction: str) -> None:
        self.instructions.append(instruction)


def reject_answer(reply) -> str | None:
    text = reply.text.strip()
    if not text:
        return "empty answer"
    if reply.finish_reason == "length":
        return "answer cut at the token limit"
    if any(r in text[:200].lower() for r in REFUSALS):
        return "refusal"
    return None


# ------------------------------------------------------------------------------------------------ loop

def self_instruct(teacher, seed_tasks: list[dict], out, *, n: int, temperature: float = 1.0, top_p: float = 0.95,
                  answer_temperature: float = 0.7, answer_max_tokens: int = 256, seed: int = 0,
                  patience: int = 20, progress: bool = True) -> dict:
    """Append teacher-made Alpaca records to `out` until it holds `n`; the counts of what was kept and why
    the rest was dropped. Each round sends `teacher.concurrency` instruction requests when fewer new tasks are
    waiting than records are missing, then asks for answers to the waiting tasks together and appends the
    answered pairs."""
    from tqdm.auto import tqdm

    if not seed_tasks:
        raise LlamalabError("the seed task file holds no tasks; self-instruct needs a few examples to start from")
    if n < 1:
        raise LlamalabError(f"--n must be >= 1, got {n}")
    with Journal(out) as journal:
        run = Run(teacher, seed_tasks, journal, random.Random(f"{seed}-{len(journal.records)}"),
                  dict(temperature=temperature, top_p=top_p), dict(temperature=answer_temperature,
                                                                   max_tokens=answer_max_tokens))
        bar = tqdm(total=n, initial=min(len(journal.records), n), desc="self-instruct", unit="pair",
                   disable=not progress, dynamic_ncols=True)
        idle = 0
        while len(journal.records) < n:
            kept = run.round(n - len(journal.records))
            bar.update(kept)
            idle = 0 if kept else idle + 1
            if idle >= patience:
                raise LlamalabError(f"the teacher wrote no usable task in {patience} rounds in a row "
                                    f"({', '.join(f'{k} {v}' for k, v in run.stats.items())}); {len(journal.records)} "
                                    f"pairs are in {out}. Try a stronger teacher or another --temperature")
        bar.close()
    return dict(run.stats, total=len(journal.records))


class Run:
    """One self-instruct run's state: the pool, the new tasks waiting for an answer, the counts."""

    def __init__(self, teacher, seed_tasks, journal, rng, ask: dict, answer: dict):
        self.teacher, self.seed_tasks, self.journal, self.rng = teacher, seed_tasks, journal, rng
        self.ask, self.answer = ask, answer
        done = journal.records
        # the seed tasks as shown (with their inputs) too: a teacher copying an example with its input is caught
        self.pool = Pool(list(dict.fromkeys([t["instruction"] for t in seed_tasks] + [shown(t) for t in seed_tasks]
                                            + [r.get("instruction", "") for r in done])))
        self.waiting: list[dict] = []  # new tasks that passed the filters, not answered yet (lost on a kill)
        self.stats = Counter(resumed=len(done))

    def round(self, missing: int) -> int:
        """New tasks if fewer than `missing` wait, answers to up to max(missing, concurrency) of them; how many
        records were appended (never more than `missing`)."""
        if len(self.waiting) < missing:
            self.waiting += self.new_tasks()
        batch = self.waiting[:max(missing, self.teacher.concurrency)]
        del self.waiting[:len(batch)]
        replies = self.teacher.chat([answer_request(t, seed=self.rng.randrange(2**31), **self.answer) for t in batch])
        kept = 0
        for task, reply in zip(batch, replies):
            why = reject_answer(reply)
            if why:
                self.stats[f"dropped: {why}"] += 1
            elif kept < missing:
                self.journal.append({**task, "output": reply.text.strip()})
                self.stats["kept"] += 1
                kept += 1
        return kept

    def new_tasks(self) -> list[dict]:
        """One instruction request per concurrent slot, each with its own examples and topic; the tasks that pass."""
        requests = []
        for _ in range(self.teacher.concurrency):
            examples = self.rng.sample(self.seed_tasks, min(SEED_SHOWN, len(self.seed_tasks)))
            examples += self.rng.sample(self.journal.records, min(GENERATED_SHOWN, len(self.journal.records)))
            self.rng.shuffle(examples)
            requests.append(instruction_request(examples, self.rng.choice(TOPICS), seed=self.rng.randrange(2**31),
                                                **self.ask))
        tasks = []
        for reply in self.teacher.chat(requests):
            self.stats["instruction requests"] += 1
            items = parse_instructions(reply.text)
            if reply.finish_reason == "length" and items:
                items.pop()  # the last task may be cut mid-sentence
            self.stats["parsed"] += len(items)
            for item in items:
                why = self.pool.reject(item)
                if why:
                    self.stats[f"dropped: {why}"] += 1
                else:
                    self.pool.add(item)
                    tasks.append({"instruction": item, "input": ""})
        return tasks
