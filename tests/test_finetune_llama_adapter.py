"""`llamalab finetune --method llama-adapter` on a small random checkpoint (SmolLM2's real tokenizer and chat
template): the zero-init gates move, only prompts and gates train, peft (`PeftModel.from_pretrained` on
transformers' LlamaForCausalLM of the same weights) loads the saved adapter and gives our logits within 1e-4,
a resumed run equals the uninterrupted one bit for bit, bad flags are one error line. Then `--adapter` with a
peft-made adaption prompt on generate (peft's greedy tokens), chat, serve and eval (peft's log-likelihoods).
The real SmolLM2's loss going down is in test_finetune_smollm2.py."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import llamalab
from cli_output import without_notices
from llamalab.cli import main
from llamalab.tokenizer import load_tokenizer
from tiny_chat import ARGS, base, data  # noqa: F401  (module fixtures)

RUN = ["--seq-len", "96", "--micro-batch-size", "4", "--lr", "5e-2", "--progress", "false", "--val-split", "0.2",
       "--method", "llama-adapter", "--adapter-len", "6", "--adapter-layers", "1", "--samples", "0"]
PROMPT = "What is a kludge?"


def finetune_args(base, data, out):
    return ["finetune", "--model", str(base), "--data", str(data), "--out", str(out), "--max-steps", "6",
            "--ckpt-every", "3", *RUN]


@pytest.fixture(scope="module")
def trained(base, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    assert main(finetune_args(base, data, out)) == 0
    return out


def hf_llama(base):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()


def test_run_trains_prompt_and_gate_only_and_lowers_the_loss(trained):
    report = json.loads((trained / "report.json").read_text())
    assert (report["method"], report["adapter_len"], report["adapter_layers"]) == ("llama-adapter", 6, 1)
    assert report["trainable_params"] == 6 * ARGS.dim + 1  # one layer's prompt and gate, nothing else
    # a random model's answers are near uniform: its loss moves little (the real SmolLM2's: test_finetune_smollm2)
    assert report["val_loss_after"] < report["val_loss_before"], report
    config = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["adapter_len"], config["adapter_layers"]) == ("ADAPTION_PROMPT", 6, 1)
    tensors = load_file(trained / "adapter" / "adapter_model.safetensors")
    layer = "base_model.model.model.layers.1.self_attn."  # the top layer of two
    assert set(tensors) == {layer + "adaption_prompt", layer + "adaption_gate"}
    assert tensors[layer + "adaption_prompt"].shape == (1, 6, ARGS.dim)
    assert tensors[layer + "adaption_gate"].abs().item() > 1e-2  # zero at the start, trained away from it


def test_peft_loads_our_adapter_with_our_logits(trained, base):
    from peft import PeftModel

    ours = llamalab.load(base, adapter=trained / "adapter")
    plain = llamalab.load(base)
    tokens = torch.tensor([ours.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(hf_llama(base), trained / "adapter").eval()
        want = theirs(input_ids=tokens).logits
        diff, moved = (want - ours.model(tokens)).abs().max(), (want - plain.model(tokens)).abs().max()
    assert diff <= 1e-4 and moved > 1e-3, (diff, moved)


def test_resume_equals_the_uninterrupted_run(trained, base, data, tmp_path):
    out = tmp_path / "resumed"  # the run as a crash after checkpoint 3 leaves it
    shutil.copytree(trained, out)
    for done in (out / "ckpt" / "step-000006", out / "adapter"):
        shutil.rmtree(done)
    (out / "report.json").unlink()
    assert main(finetune_args(base, data, out) + ["--resume"]) == 0
    timing = ("tokens_per_s", "mfu", "elapsed_s")
    strip = lambda d: [{k: v for k, v in json.loads(r).items() if k not in timing}  # noqa: E731
                       for r in (d / "metrics.jsonl").read_text().splitlines()]
    assert strip(out) == strip(trained) and len(strip(out)) == 7
    want, got = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (trained, out))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("extra, says", [
    (["--adapter-layers", "3"], "adapter_layers=3 but"),
    (["--adapter-len", "0"], "adapter_len must be a positive integer, got 0"),
    (["--lora-rank", "4"], "--lora-rank is a LoRA setting but method=llama-adapter"),
    (["--quantize-base", "nf4"], "LLaMA-Adapter trains on the base as it is"),
    (["--method", "adapter"], "method must be one of full, lora, llama-adapter"),
])
def test_bad_flags_are_one_line(base, data, tmp_path, capsys, extra, says):
    out = tmp_path / "out"
    assert main(finetune_args(base, data, out) + extra) == 2
    err = without_notices(capsys.readouterr().err).strip()
    assert len(err.splitlines()) == 1 and err.startswith("llamalab finetune: error: ") and says in err, err
    assert not out.exists()


def test_adapter_flags_without_the_method_are_one_line(base, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["finetune", "--model", str(base), "--data", str(data), "--out", str(out), "--adapter-len", "4"]) == 2
    err = without_notices(capsys.readouterr().err).strip()
    assert len(err.splitlines()) == 1 and "adapter_len is a LLaMA-Adapter setting but method=full" in err, err
    assert not out.exists()


# --adapter with a LLaMA-Adapter on the commands that run a model: peft's own adapter (gates set far from
# their zero init, so that the answer changes) against peft's model; float32, so that greedy ties match

N = 6


@pytest.fixture(scope="module")
def peft_adapter(base, tmp_path_factory):
    from peft import AdaptionPromptConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(hf_llama(base), AdaptionPromptConfig(adapter_len=6, adapter_layers=2, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("adaption_gate"):
                p.fill_(10.0)
    out = tmp_path_factory.mktemp("peft") / "adapter"
    model.save_pretrained(out)
    return out, model.eval()


def peft_greedy(model, tokenizer, ids) -> str:
    with torch.no_grad():
        tokens = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=N, do_sample=False, pad_token_id=0)
    return tokenizer.decode(tokens[0, len(ids):].tolist())


@pytest.fixture(scope="module")
def chat_answer(base, peft_adapter):
    """peft's greedy answer to PROMPT as a chat turn, rendered with the checkpoint's template."""
    rt = llamalab.load_runnable(base, device="cpu")
    return peft_greedy(peft_adapter[1], rt.tokenizer, rt.encode_chat([{"role": "user", "content": PROMPT}]))


def cli(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_generate_runs_a_peft_adaption_prompt(base, peft_adapter, capsys):
    adapter, model = peft_adapter
    run = ["generate", "--model", str(base), "--prompt", PROMPT, "--max-new-tokens", str(N), "--no-stream",
           "--dtype", "float32"]
    got = cli(capsys, *run, "--adapter", str(adapter))
    tokenizer = load_tokenizer(base)
    assert got == peft_greedy(model, tokenizer, tokenizer.encode(PROMPT, bos=tokenizer.add_bos))
    assert got != cli(capsys, *run)  # the adapter changes the answer


def test_chat_runs_a_peft_adaption_prompt(base, peft_adapter, chat_answer, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROMPT}\n/exit\n"))
    got = cli(capsys, "chat", "--model", str(base), "--adapter", str(peft_adapter[0]), "--max-new-tokens", str(N),
              "--dtype", "float32")
    assert got.strip() == chat_answer.strip() and chat_answer.strip()


def test_serve_runs_a_peft_adaption_prompt(base, peft_adapter, chat_answer, tmp_path):
    import openai

    from llamalab.serve.process import ServerProcess

    with ServerProcess(base, "--adapter", str(peft_adapter[0]), "--dtype", "float32", "--served-model-name", "t",
                       "--max-batch", "2", log=tmp_path / "server.log") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="t", messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=N, temperature=0)
    assert reply.choices[0].message.content == chat_answer


def test_eval_scores_with_a_peft_adaption_prompt(base, peft_adapter, tmp_path):
    """Each choice's log-likelihood as peft's model gives it (context and continuation split as lm-eval
    splits them: the whole string encoded, the context's tokens first)."""
    adapter, model = peft_adapter
    log = tmp_path / "samples.jsonl"
    assert main(["eval", "--model", str(base), "--adapter", str(adapter), "--dtype", "float32", "--tasks",
                 "arc_easy", "--limit", "1", "--log-samples", str(log), "--output", str(tmp_path / "e.json")]) == 0
    item = json.loads(log.read_text().splitlines()[0])
    tokenizer = load_tokenizer(base)
    for context, continuation, got in zip(item["contexts"], item["continuations"], item["loglikelihoods"]):
        whole = tokenizer.encode(context + continuation, bos=tokenizer.add_bos)
        n = len(tokenizer.encode(context, bos=tokenizer.add_bos))
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
        want = sum(logp[i - 1, whole[i]].item() for i in range(n, len(whole)))
        assert abs(got - want) < 1e-3, (got, want)


def test_lora_merge_of_a_llama_adapter_is_one_line(base, peft_adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["lora", "merge", "--model", str(base), "--adapter", str(peft_adapter[0]), "--out", str(out)]) == 2
    err = without_notices(capsys.readouterr().err).strip()
    assert len(err.splitlines()) == 1 and "no weight deltas to merge; run it unmerged with --adapter" in err, err
    assert not out.exists()
