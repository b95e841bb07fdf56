"""Self-instruct's parts: the parser, the paper's filters (ROUGE-L threshold on hand-made near-duplicates),
the append-only journal, resume after SIGKILL, and what a user sees when the teacher endpoint fails.

The teacher here is `tests/scripted_endpoint.py`: a real HTTP server with scripted replies, because a real
server cannot be made to fail on demand. The whole loop on a real `llamalab serve` is in test_judge_e2e.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from llamalab.cli import main as cli_main
from llamalab.instruct import SEED_TASKS
from llamalab.instruct.backends import Reply
from llamalab.instruct.journal import Journal
from llamalab.instruct.self_instruct import Pool, answer_request, load_seed_tasks, parse_instructions, reject_answer

from scripted_endpoint import ScriptedEndpoint


def test_parse_numbered_lists_in_the_forms_small_models_write():
    reply = """Sure! Here are new tasks:

9. Name three rivers in Africa.
10) Explain how a rainbow forms.
**11.** Write a limerick about a cat.
Task 12: Describe the smell of rain.
### 13. Instruction: "Convert 5 miles to kilometres."
*14. Plan a picnic for four people.
- 15) Name a fruit that is red inside.
(16). Explain what a verb is.
- not numbered, not a task line
- 3 cups of flour, not a task line either
17.
Hope this helps!"""
    assert parse_instructions(reply) == ["Name three rivers in Africa.", "Explain how a rainbow forms.",
                                         "Write a limerick about a cat.", "Describe the smell of rain.",
                                         "Convert 5 miles to kilometres.", "Plan a picnic for four people.",
                                         "Name a fruit that is red inside.", "Explain what a verb is."]
    assert parse_instructions("I cannot help with that.") == []


def test_rouge_l_threshold_on_hand_made_near_duplicates():
    """ROUGE-L F = 2PR/(P+R) with P = R = LCS / length for equal lengths (rouge-score lowercases and keeps
    alphanumeric tokens). Computed by hand:
      pool:  "explain in simple words why the sky looks blue today"            10 tokens
      7 shared in order (explain in simple words why the ... looks): F = 7/10 = 0.70 → near duplicate (>= 0.7)
      6 shared (explain in simple words why ... looks): F = 6/10 = 0.60 → kept
      "Give three tips for keeping a houseplant alive." vs "... a cactus alive.": LCS 7 of 8, F = 0.875
    """
    pool = Pool(["Explain in simple words why the sky looks blue today.",
                 "Give three tips for keeping a houseplant alive."])
    seven = "Explain in simple words why the grass looks green now."
    six = "Explain in simple words why a frog looks green now."
    assert pool.rouge_l(seven) == pytest.approx(0.7)
    assert pool.reject(seven) == "near duplicate"
    assert pool.rouge_l(six) == pytest.approx(0.6)
    assert pool.reject(six) is None
    assert pool.rouge_l("Give three tips for keeping a cactus alive.") == pytest.approx(0.875)
    assert pool.reject("give three tips for keeping a houseplant alive") == "near duplicate"  # case, punctuation
    pool.add(six)
    assert pool.reject(six) == "near duplicate"  # a kept task joins the pool


@pytest.mark.parametrize("task, why", [
    ("Draw a picture of your house.", "banned keyword"),
    ("Describe the image below.", "banned keyword"),
    ("Summarize the attached file in a sentence.", "banned keyword"),
    ("Write a program that sorts numbers.", "form"),
    ("... and then explain it.", "form"),
    ("Explain.", "length"),
    (" ".join(["word"] * 151), "length"),
    ("Explain what a mapping is in mathematics.", None),  # "map" is banned as a word, not inside one
])
def test_filters(task, why):
    assert Pool([]).reject(task) == why


def test_answer_filters():
    assert reject_answer(Reply("  ", "stop")) == "empty answer"
    assert reject_answer(Reply("A long answer that was", "length")) == "answer cut at the token limit"
    assert reject_answer(Reply("I'm sorry, but I cannot help.", "stop")) == "refusal"
    assert reject_answer(Reply("Paris.", "stop")) is None


def test_answers_are_asked_for_in_fewer_than_100_words_as_alpaca_asks():
    request = answer_request({"instruction": "Translate the sentence into French.", "input": "Good night."},
                             temperature=0.7, seed=1, max_tokens=256)
    assert request.messages == ({"role": "user", "content": "Translate the sentence into French.\n\nGood night."
                                 "\n\nAnswer in fewer than 100 words."},)


def test_seed_file_shipped_and_bad_seed_files(tmp_path, capsys):
    seeds = load_seed_tasks(SEED_TASKS)
    assert len(seeds) == 40 and all(t["instruction"] and t["output"] for t in seeds)
    assert len({t["instruction"] for t in seeds}) == 40
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "pairs.jsonl"
    assert cli_main(["self-instruct", "--teacher", "http://127.0.0.1:9/v1", "--seed-tasks", str(empty),
                     "--out", str(out)]) == 2
    assert "empty.jsonl: no records (the file is empty)" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"instruction": "ok", "output": "x"}\n{"output": "no instruction"}\n')
    assert cli_main(["self-instruct", "--teacher", "http://127.0.0.1:9/v1", "--seed-tasks",
                     str(tmp_path / "bad.jsonl"), "--out", str(out)]) == 2
    assert "bad.jsonl:2: a seed task needs a non-empty string 'instruction'" in capsys.readouterr().err
    assert not out.exists()


def test_journal_drops_a_cut_line_and_never_repeats(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.append({"a": 1})
        j.append({"a": 2})
    with open(path, "ab") as f:
        f.write(b'{"a": 3, "cut he')  # a kill in the middle of a write
    with Journal(path) as j:
        assert j.records == [{"a": 1}, {"a": 2}]
        j.append({"a": 3})
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"a": 1}, {"a": 2}, {"a": 3}]
    (tmp_path / "other.jsonl").write_text("not json\n")
    with pytest.raises(Exception, match="other.jsonl:1: not a JSON record"):
        Journal(tmp_path / "other.jsonl")


# ------------------------------------------------------------------------------------------ a teacher

WORDS = ("river mountain violin tomato glacier lantern compass harbor orchard meadow pebble falcon tunnel "
         "bicycle kettle ladder magnet pigeon quilt saddle thimble walnut anchor blanket candle dolphin "
         "engine feather garden hammer island jacket kayak lemon mirror needle ocean parrot rocket sandal "
         "tiger umbrella velvet window yogurt zebra acorn bridge castle desert").split()


def teacher(messages):
    """Numbered new tasks for an instruction prompt (fresh words each time), a short answer otherwise."""
    prompt = messages[-1]["content"]
    if "Write only the tasks, not their answers" in prompt:
        rng = random.Random(prompt)
        return "\n".join(f"{1 + i}. Compare a {' and a '.join(rng.sample(WORDS, 3))} for a {rng.choice(WORDS)} "
                         f"{rng.choice(WORDS)}." for i in range(8))
    return f"An answer to: {prompt}"


def run_cli(*args):
    return subprocess.Popen([sys.executable, "-m", "llamalab", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_resume_after_sigkill_loses_only_the_round_in_flight(tmp_path):
    out = tmp_path / "pairs.jsonl"
    with ScriptedEndpoint(teacher, delay=0.05) as endpoint:
        args = ("self-instruct", "--teacher", endpoint.url, "--out", out, "--n", 60, "--concurrency", 4,
                "--no-progress")
        proc = run_cli(*args)
        deadline = time.monotonic() + 120
        while (not out.exists() or out.read_text().count("\n") < 12) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = out.read_bytes()
        kept_before = before.count(b"\n")
        assert 12 <= kept_before < 60
        proc = run_cli(*args)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert out.read_bytes().startswith(before.rsplit(b"\n", 1)[0])  # what was written stays, byte for byte
    assert len(records) == 60
    assert len({r["instruction"] for r in records}) == 60  # no line twice
    assert all(set(r) == {"instruction", "input", "output"} and r["output"] for r in records)
    assert f"60 records ({kept_before} from before" in stdout


def test_unreachable_endpoint_is_one_line_with_the_url(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    out = tmp_path / "pairs.jsonl"
    assert cli_main(["self-instruct", "--teacher", url, "--out", str(out), "--retries", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llamalab self-instruct: error: cannot reach {url}/models") and "\n" not in err
    assert "after 2 attempts with backoff" in err


def test_retries_with_backoff_then_succeeds(tmp_path):
    with ScriptedEndpoint(teacher, fail_first=2) as endpoint:
        assert cli_main(["self-instruct", "--teacher", endpoint.url, "--out", str(tmp_path / "p.jsonl"), "--n", "3",
                         "--concurrency", "1", "--retries", "2", "--no-progress"]) == 0
        assert len(endpoint.requests) >= 4  # two 503s, then the instruction request and the answers
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("kind, expected", [
    (dict(status=503), "answered HTTP 503: scripted 503 (after 2 attempts with backoff; the server is overloaded"),
    (dict(status=404), "answered HTTP 404: scripted 404 — check the URL"),
    (dict(status=401), "answered HTTP 401: scripted 401 — check the API key"),
    (dict(status=400), "answered HTTP 400: scripted 400 — the endpoint rejected the request"),
    (dict(body=b"<html>gateway</html>"), "answered with invalid JSON"),
    (dict(body=b'{"choices": []}'), "is not a chat completion"),
])
def test_failing_endpoint_is_one_line_and_loses_nothing(tmp_path, capsys, kind, expected):
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"instruction": "Name a colour.", "input": "", "output": "Blue."}\n')
    before = out.read_bytes()
    with ScriptedEndpoint(teacher, **kind) as endpoint:
        code = cli_main(["self-instruct", "--teacher", endpoint.url, "--out", str(out), "--n", "5",
                         "--retries", "1", "--concurrency", "2", "--no-progress"])
        requests = len(endpoint.requests)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith(f"llamalab self-instruct: error: {endpoint.url}/chat/completions") and expected in err, err
    assert out.read_bytes() == before
    if kind.get("status") == 503:
        assert requests == 2 * 2  # each of the 2 concurrent requests: the first try and 1 retry
