"""The judge's parts: Elo and Bradley–Terry against hand-computed cases, verdict parsing, both orders asked in
pairwise mode, malformed replies counted, retried once and reported, resume, bad input.

The judge in these tests is `tests/scripted_endpoint.py` (a real HTTP server with scripted verdicts), so that
the replies, including malformed ones, are known; a real judge (`llamalab serve` on SmolLM2) is in
test_judge_e2e.py.
"""

from __future__ import annotations

import json
import math

import pytest

from llamalab.cli import main as cli_main
from llamalab.judge import QUESTIONS, REFERENCES
from llamalab.judge.prompts import parse_rating, parse_verdict
from llamalab.judge.ranking import bootstrap, bradley_terry, elo
from llamalab.judge.report import battles
from llamalab.instruct.records import load_questions

from scripted_endpoint import ScriptedEndpoint


def test_bradley_terry_equals_the_hand_computed_maximum():
    """A–B: A wins 2, loses 1; B–C: B wins 2, loses 1; A–C: A wins 4, loses 1.
    Try strengths p = (4, 2, 1): P(A>B) = 4/6 = 2/3, P(B>C) = 2/3, P(A>C) = 4/5. The likelihood equations
    (wins = expected wins, for each model) hold:
      A: 2 + 4 = 6 = 3·2/3 + 5·4/5 = 2 + 4;  B: 1 + 2 = 3 = 3·1/3 + 3·2/3;  C: 1 + 1 = 2 = 3·1/3 + 5·1/5,
    and the log-likelihood is strictly concave up to a common shift, so (4, 2, 1) is the maximum. On the Elo
    scale: 400·log10(p), centered at 1000: log10 2 = 0.30103 → A 1000 + 120.412, B 1000, C 1000 − 120.412."""
    b = [("A", "B", "a")] * 2 + [("A", "B", "b")] + [("B", "C", "a")] * 2 + [("B", "C", "b")]
    b += [("A", "C", "a")] * 4 + [("C", "A", "a")]  # the last one from C's side: C beat A
    r = bradley_terry(b, ["A", "B", "C"])
    d = 400 * math.log10(2)
    assert r == pytest.approx({"A": 1000 + d, "B": 1000.0, "C": 1000 - d}, abs=1e-6)
    # two models: A beats B 3 times of 4 → p_A/p_B = 3, a gap of 400·log10 3 = 190.849; a tie is half a win each:
    # 2 wins + 2 ties = 3 of 4 as well
    r2 = bradley_terry([("A", "B", "a")] * 3 + [("A", "B", "b")], ["A", "B"])
    r3 = bradley_terry([("A", "B", "a")] * 2 + [("B", "A", "tie")] * 2, ["A", "B"])
    assert r2["A"] - r2["B"] == pytest.approx(400 * math.log10(3), abs=1e-6) == r3["A"] - r3["B"]


def test_bradley_terry_stays_finite_when_a_model_never_loses():
    r = bradley_terry([("A", "B", "a")] * 5, ["A", "B"])
    assert math.isfinite(r["A"]) and r["A"] - r["B"] > 600


def test_elo_equals_the_hand_computed_updates():
    """k = 4, all start at 1000.
    1. A beats B: E_A = 1/(1 + 10^0) = 0.5 → A = 1000 + 4·0.5 = 1002, B = 998.
    2. B ties C: E_B = 1/(1 + 10^((1000 − 998)/400)) = 1/(1 + 10^0.005) = 1/2.01157945 = 0.49712180
       → B = 998 + 4·(0.5 − 0.49712180) = 998.01151280, C = 1000 − 0.01151280 = 999.98848720.
    3. C beats A: E_C = 1/(1 + 10^((1002 − 999.98848720)/400)) = 1/(1 + 10^0.00502878) = 0.49710523
       → C = 999.98848720 + 4·0.50289477 = 1002.00006628, A = 1002 − 2.01157907 = 999.98842093."""
    r = elo([("A", "B", "a"), ("B", "C", "tie"), ("C", "A", "a")], ["A", "B", "C"])
    assert r == pytest.approx({"A": 999.98842093, "B": 998.01151280, "C": 1002.00006628}, abs=1e-7)


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    b = [("A", "B", "a")] * 14 + [("A", "B", "b")] * 6 + [("A", "B", "tie")] * 4
    point = bradley_terry(b, ["A", "B"])
    ci = bootstrap(bradley_terry, b, ["A", "B"], rounds=200, seed=1)
    assert ci == bootstrap(bradley_terry, b, ["A", "B"], rounds=200, seed=1)
    for m in "AB":
        assert ci[m][0] < point[m] < ci[m][1]
    assert ci["A"][0] > 1000 - 1e-9 or ci["A"][1] - ci["A"][0] > 50  # 14:6 is not a sure thing


def test_verdict_and_rating_parsing():
    assert parse_verdict("A is vague. B is right. [[B]]") == "B"
    assert parse_verdict("At first I thought [[A]], but on reflection: [[C]]") == "C"  # the final one
    assert parse_verdict("Assistant A is better.") is None
    assert parse_verdict("Assistant A is better.", bare=True) == "A"  # the reply to "one letter only"
    assert parse_verdict("b", bare=True) == "B" and parse_verdict("Both are good.", bare=True) is None
    assert parse_verdict("A's answer is longer", bare=True) is None
    assert parse_rating("7", bare=True) == 7 and parse_rating("7") is None
    assert parse_rating("Good answer. Rating: [[7]]") == 7
    assert parse_rating("Rating: [[8.5/10]]") == 8.5
    assert parse_rating("Rating: 6") == 6
    assert parse_rating("Rating: [[11]]") is None and parse_rating("no grade") is None


def test_two_orders_disagreeing_make_a_tie():
    j = [{"question_id": "q1", "models": ["x", "y"], "verdict": "A"},
         {"question_id": "q1", "models": ["y", "x"], "verdict": "B"},   # x wins in both orders
         {"question_id": "q2", "models": ["x", "y"], "verdict": "A"},
         {"question_id": "q2", "models": ["y", "x"], "verdict": "A"},   # position bias: the first one wins
         {"question_id": "q3", "models": ["x", "y"], "verdict": None}]  # unusable: left out
    fights, counts = battles(j)
    assert fights == [("x", "y", "a"), ("x", "y", "tie")]
    assert counts == {"consistent": 1, "inconsistent": 1, "incomplete": 1}


# ------------------------------------------------------------------------------------------- the CLI

def answers_file(path, model, questions, text):
    path.write_text("".join(json.dumps({"id": q, "model": model, "answer": text(q)}) + "\n" for q in questions))
    return path


def scripted_judge(messages):
    """Prefers the answer that says "good"; answers nonsense on the first try for reasoning-02; never gives a
    verdict for reasoning-03 (not even when asked again)."""
    user = messages[1]["content"] if len(messages) > 1 else ""
    if "bat and a ball" in user:
        return "I think so." if messages[-1]["role"] == "user" and len(messages) == 2 else "[[B]]"
    if "Tom is taller" in user:
        return "Both are fine, I suppose."
    if "Rating" in messages[0]["content"]:
        return "Fine. Rating: [[8]]" if "good" in user.split("[The Start of Assistant's Answer]")[1] else "Rating: [[3]]"
    a = user.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]
    return "A is better. [[A]]" if "good" in a else "B is better. [[B]]"


def test_pairwise_judge_end_to_end_on_a_scripted_judge(tmp_path, capsys):
    questions = list(load_questions(QUESTIONS))[:12]
    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(line + "\n" for line in QUESTIONS.read_text().splitlines()[:12]))
    a = answers_file(tmp_path / "a.jsonl", "strong", questions, lambda q: f"a good answer to {q}")
    b = answers_file(tmp_path / "b.jsonl", "weak", questions, lambda q: f"a poor answer to {q}")
    out = tmp_path / "judge"
    with ScriptedEndpoint(scripted_judge) as endpoint:
        args = ["judge", "--questions", str(qs), "--reference", str(REFERENCES), "--answers", str(a), str(b),
                "--judge", endpoint.url, "--out", str(out), "--bootstrap", "100", "--no-progress"]
        assert cli_main(args) == 0
        asked = len(endpoint.requests)
        assert cli_main(args) == 0  # a rerun asks nothing again
        assert len(endpoint.requests) == asked
    # 12 questions × 2 orders + 2 retries for the bat-and-ball question + 2 for the Tom question
    assert asked == 24 + 2 + 2
    orders = {(r["question_id"], tuple(r["models"])) for r in map(json.loads, (out / "judgments.jsonl").open())}
    assert orders == {(q, o) for q in questions for o in (("strong", "weak"), ("weak", "strong"))}
    shown = [r["messages"][1]["content"] for r in endpoint.requests]
    assert sum("[The Start of Reference Answer]" in s for s in shown) > 0  # reasoning-0x have references
    report = json.loads((out / "report.json").read_text())
    assert report["malformed"] == {"retried": 4, "unusable after retry": 2}
    # bat-and-ball: retried in both orders, [[B]] both times → a tie; Tom: unusable → left out; 10 clear wins
    assert report["table"]["strong"]["weak"] == {"win": 10, "tie": 1, "loss": 0}
    assert report["order_agreement"] == {"consistent": 10, "inconsistent": 1, "incomplete": 1}
    assert [r["model"] for r in report["ranking"]] == ["strong", "weak"]
    assert (out / "ranking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "4 retried, 2 still unusable" in printed and "strong vs weak" in printed


def test_single_mode_grades(tmp_path):
    questions = list(load_questions(QUESTIONS))
    a = answers_file(tmp_path / "a.jsonl", "strong", questions, lambda q: "good")
    b = answers_file(tmp_path / "b.jsonl", "weak", questions[:5], lambda q: "bad")
    with ScriptedEndpoint(scripted_judge) as endpoint:
        assert cli_main(["judge", "--mode", "single", "--answers", str(a), str(b), "--judge", endpoint.url,
                         "--out", str(tmp_path / "j"), "--bootstrap", "50", "--no-progress"]) == 0
    report = json.loads((tmp_path / "j" / "report.json").read_text())
    ranking = {r["model"]: r for r in report["ranking"]}
    # the bat-and-ball and Tom questions get no usable grade (the retry of the first answers "[[B]]")
    assert report["malformed"] == {"retried": 2, "unusable after retry": 2}
    assert (ranking["strong"]["graded"], ranking["strong"]["mean"]) == (38, 8)
    assert (ranking["weak"]["graded"], ranking["weak"]["mean"]) == (5, 3)
    assert [r["model"] for r in report["ranking"]] == ["strong", "weak"]


@pytest.mark.parametrize("content, message", [
    ('{"id": "nope", "answer": "x"}\n', "question id 'nope' is not in the question file"),
    ('{"id": "writing-01"}\n', "an answer record needs 'id' and a string 'answer'"),
    ("", "no records (the file is empty)"),
])
def test_bad_answer_files(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    good = answers_file(tmp_path / "good.jsonl", "m", ["writing-01"], lambda q: "x")
    assert cli_main(["judge", "--answers", str(good), str(bad), "--judge", "http://127.0.0.1:9/v1",
                     "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_pairwise_needs_two_models(tmp_path, capsys):
    good = answers_file(tmp_path / "good.jsonl", "m", ["writing-01"], lambda q: "x")
    with ScriptedEndpoint(scripted_judge) as endpoint:
        assert cli_main(["judge", "--answers", str(good), "--judge", endpoint.url, "--out", str(tmp_path / "o")]) == 2
    assert "pairwise judging needs answers from two or more models" in capsys.readouterr().err
