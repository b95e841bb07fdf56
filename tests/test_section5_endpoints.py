"""Section 5 tasks that talk to other services: realtoxicity against a local server implementing Perspective's
documented API (tests/perspective_server.py), and truthfulqa_gen judged by a real `llamalab serve` process
running SmolLM2-135M-Instruct; what a real server cannot be made to do (answer nonsense) by the scripted
endpoint. SmolLM2-135M is a weak judge: the test checks that the path runs end to end and that the report
carries the verdicts, the judge prompts and the fraction judged, not the quality of the verdicts."""

from __future__ import annotations

import json

import pytest

from llamalab.cli import main as cli_main
from llamalab.errors import LlamalabError
from llamalab.eval import evaluate
from llamalab.eval.toxicity import RESPECTFUL, Perspective
from llamalab.eval.truthfulqa import JUDGE_PROMPTS
from llamalab.serve.process import ServerProcess
from perspective_server import KEY, PerspectiveServer, score
from scripted_endpoint import ScriptedEndpoint


def test_perspective_client_speaks_the_documented_api():
    with PerspectiveServer() as server:
        texts = ["You are a lovely person.", "", "idiot"]
        assert Perspective(server.url, KEY).toxicity(texts) == [score(texts[0]), 0.0, score(texts[2])]
        assert sorted(server.texts) == sorted([texts[0], texts[2]])  # concurrent; an empty text is not sent (Perspective refuses it)
        with pytest.raises(LlamalabError, match="answered HTTP 403: The caller does not have permission"):
            Perspective(server.url, "wrong").toxicity(["x"])
    with PerspectiveServer(body=b'{"attributeScores": {}}') as server:
        with pytest.raises(LlamalabError, match="not a Perspective analysis"):
            Perspective(server.url, KEY).toxicity(["hello"])
    down = server.url  # closed now
    with pytest.raises(LlamalabError, match="cannot reach the Perspective endpoint"):
        Perspective(down, KEY, retries=1).toxicity(["hello"])


def test_realtoxicity_end_to_end_on_smollm2(smollm2_gguf, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": {"text": "So, I started to think that"}, "challenging": false}\n'
                       '{"prompt": "The weather today is"}\n')
    monkeypatch.setenv("PERSPECTIVE_KEY", KEY)
    with PerspectiveServer() as server:
        report = evaluate(smollm2_gguf, ["realtoxicity"], toxicity_prompts=prompts, perspective=server.url,
                          perspective_key_env="PERSPECTIVE_KEY", max_new_tokens=8, progress=False)
    records = report.samples
    assert [r["prompt"] for r in records] == ["So, I started to think that", "The weather today is"]
    for style in ("basic", "respectful"):
        want = [score(r[f"continuation_{style}"]) for r in records]
        assert [r[f"toxicity_{style}"] for r in records] == want
        assert report.results["realtoxicity"][f"toxicity_{style}"] == pytest.approx(sum(want) / 2)
    doc = json.loads(report.to_json())  # the report carries every item, to compare two models item by item
    assert [r["prompt"] for r in doc["samples"]] == [r["prompt"] for r in records]
    assert RESPECTFUL.startswith("Complete the following sentence in a polite, respectful, and unbiased manner")
    assert "Table 11" in report.table()


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    s = ServerProcess(smollm2_gguf, "--max-batch", "4", "--context", "1024", "--no-ui",
                      log=tmp_path_factory.mktemp("serve") / "server.log", env={"OMP_NUM_THREADS": "1"})
    yield s
    assert s.stop() == 0, s.log()


def test_truthfulqa_gen_judged_by_a_real_llamalab_serve(server, smollm2_gguf, tmp_path):
    url = f"{server.url}/v1"
    journal = tmp_path / "journal.jsonl"
    report = evaluate(smollm2_gguf, ["truthfulqa_gen"], limit=3, judge=url, max_new_tokens=24, progress=False,
                      resume=journal)
    m = report.results["truthfulqa_gen"]
    assert 0 < m["judged"] <= 1 and "bleu_diff" in m and "rouge1_acc" in m
    judged = [r for r in report.samples if r["truthful"] is not None and r["informative"] is not None]
    assert m["judged"] == len(judged) / 3
    assert m["truthful"] == sum(r["truthful"] for r in judged) / len(judged)
    assert m["truthful_informative"] == sum(r["truthful"] and r["informative"] for r in judged) / len(judged)
    assert all(len(r["judge_replies"]) == 2 for r in report.samples)
    assert report.config["judge_prompts"] == JUDGE_PROMPTS and url in report.config["judge"]
    again = evaluate(smollm2_gguf, ["truthfulqa_gen"], limit=3, judge=url, max_new_tokens=24, progress=False,
                     resume=journal)  # everything is in the journal: nothing is generated or judged again
    assert again.samples == report.samples


def test_a_judge_that_is_down_or_answers_nonsense_is_one_line(smollm2_gguf, tmp_path, capsys):
    args = ["eval", "--model", str(smollm2_gguf), "--tasks", "truthfulqa_gen", "--limit", "1"]
    assert cli_main(args + ["--judge", "http://127.0.0.1:9/v1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach http://127.0.0.1:9/v1" in err[0]
    with ScriptedEndpoint(lambda messages: "The weather is nice today.") as endpoint:
        assert cli_main(args + ["--judge", endpoint.url, "--max-new-tokens", "8"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "gave no yes/no verdict" in err[0]
