"""Chat templates against their references, and the `llamalab chat` REPL driven through a pipe."""

import subprocess
import sys

import pytest
import torch

import llamalab
from llamalab.chat_templates import alpaca_prompt, render, render_for
from llamalab.errors import LlamalabError
from llamalab.generate import Session, decode_text, generate
from llamalab.tokenizer import load_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another, in français: ü, 日本, 🦙"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "  spaces  "},
     {"role": "assistant", "content": "ok\n\nsure"}],
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_smollm2_template_equals_transformers(smollm2_gguf, hf_smollm2, conversation, add_generation_prompt):
    # reference: transformers' apply_chat_template with the tokenizer it reads from the same GGUF
    ours = load_tokenizer(smollm2_gguf)
    chat = CONVERSATIONS[conversation]
    expected = hf_smollm2[1].apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert render_for(ours, chat, add_generation_prompt=add_generation_prompt) == expected


def test_chatml_equals_smollm2_template_when_a_system_prompt_is_given(smollm2_gguf):
    tok = load_tokenizer(smollm2_gguf)  # SmolLM2's template is ChatML (plus a default system prompt)
    for chat in (CONVERSATIONS[1], CONVERSATIONS[3]):
        for agp in (True, False):
            assert render(chat, "chatml", agp) == render(chat, tok.chat_template, agp)


def test_jinja_helpers_behave_like_transformers():
    # reference: transformers' own renderer on a template using every helper it provides
    from transformers.utils.chat_template_utils import render_jinja_template
    template = (
        "{% for m in messages %}\n"
        "  {{ m['role'] | upper }}: {{ m['content'] | tojson }}\n"
        "{% if loop.index > 5 %}{% break %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ bos_token }}ASSISTANT:{% endif %}{{ strftime_now('%Y') | length }}"
    )
    chat = CONVERSATIONS[2]
    rendered = render_jinja_template([chat], chat_template=template, add_generation_prompt=True, bos_token="<s>")
    expected = rendered[0][0] if isinstance(rendered, tuple) else rendered[0]
    assert render(chat, template, True, bos_token="<s>") == expected
    with pytest.raises(LlamalabError, match="only users"):
        render(chat, "{{ raise_exception('only users') }}")
    with pytest.raises(LlamalabError, match="syntax error"):
        render(chat, "{% for %}")


def test_alpaca_is_stanford_alpaca_text():
    # the prompt strings of Stanford Alpaca's train.py (PROMPT_DICT), copied by hand
    assert alpaca_prompt("Add the numbers.", "2, 3") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2, 3\n\n### Response:")
    assert render([{"role": "user", "content": "Say hi."}], "alpaca") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi.\n\n### Response:")
    with pytest.raises(LlamalabError, match="no system prompt"):
        render(CONVERSATIONS[1], "alpaca")


def test_llama2_is_meta_chat_format():
    # Meta's llama/generation.py chat_completion: system folded into the first user turn, each exchange
    # "<s>[INST] {user} [/INST] {answer} </s>", the open turn "<s>[INST] {user} [/INST]"; contents are
    # .strip()ped after the system prompt is prepended, so " Hi" keeps its space after <</SYS>>
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "},
            {"role": "assistant", "content": " Hello! "}, {"role": "user", "content": "Bye"}]
    assert render(chat, "llama-2", bos_token="<s>", eos_token="</s>") == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi [/INST] Hello! </s><s>[INST] Bye [/INST]")
    with pytest.raises(LlamalabError, match="alternating"):
        render([{"role": "assistant", "content": "x"}], "llama-2")


def test_chat_repl_through_a_pipe(smollm2_gguf, smollm2_fp32):
    # two turns (the second re-uses the KV cache of the first), /reset, one fresh turn, /exit; float32, where
    # a cached turn and a fresh one agree to ~1e-5 in the logits, so greedy answers must be equal
    n = "12"
    proc = subprocess.run(
        [sys.executable, "-m", "llamalab", "chat", "--model", str(smollm2_gguf), "--max-new-tokens", n,
         "--dtype", "float32"],
        input="Hi!\nName a color.\n/reset\nName a color.\n/exit\nnever read\n",
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # reference: a fresh, cache-less greedy `generate` of each full conversation, in this process
    ckpt = smollm2_fp32  # the same GGUF, float32
    tok = ckpt.tokenizer

    def answer(chat):
        ids = tok.encode(render_for(tok, chat))
        return decode_text(generate(ckpt.model, [ids], max_new_tokens=int(n), stop_ids=tok.stop_ids)[0], tok,
                           stop_ids=tok.stop_ids)

    first = answer([{"role": "user", "content": "Hi!"}])
    second = answer([{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": first},
                     {"role": "user", "content": "Name a color."}])
    fresh = answer([{"role": "user", "content": "Name a color."}])
    assert proc.stdout == f"{first}\n{second}\n{fresh}\n"
    assert second != fresh  # the history mattered


QUANTIZED_TOLERANCE = 1.0  # nats; measured up to ~0.4 on SmolLM2 Q4_1 (see README, "Batch invariance")


def test_quantized_cached_turn_is_greedy_within_the_tolerance(smollm2_gguf):
    # Quantized weights run with bfloat16 activations: a cached turn (only the new tokens prefilled) computes
    # attention in other shapes than a fresh prefill, and the ~1e-7 differences that makes can flip a
    # bfloat16 rounding, so the two are not bit-equal. What holds: every token the cached turn picks is,
    # under a fresh cache-less forward of the same text, within QUANTIZED_TOLERANCE of the best token.
    ckpt = llamalab.load(smollm2_gguf, dtype=None)
    model, tok = ckpt.model, ckpt.tokenizer
    session = Session(model, max_len=512)
    turn1 = tok.encode(render_for(tok, [{"role": "user", "content": "Hi!"}]))
    first = list(session.stream(turn1, max_new_tokens=12, stop_ids=tok.stop_ids))
    chat = [{"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": decode_text(first, tok, stop_ids=tok.stop_ids)},
            {"role": "user", "content": "Name three colors."}]
    turn2 = tok.encode(render_for(tok, chat))
    second = list(session.stream(turn2, max_new_tokens=16, stop_ids=tok.stop_ids))
    assert session.tokens[:len(turn2)] == turn2  # the turn ran on the cache of the first
    with torch.inference_mode():
        logp = model(torch.tensor([turn2 + second]))[0, len(turn2) - 1:-1].float().log_softmax(-1)
    gaps = logp.max(-1).values - logp[torch.arange(len(second)), torch.tensor(second)]
    assert gaps.max().item() <= QUANTIZED_TOLERANCE, gaps.tolist()


def test_unknown_template_is_a_user_error(smollm2_gguf):
    proc = subprocess.run([sys.executable, "-m", "llamalab", "chat", "--model", str(smollm2_gguf),
                           "--template", "nope"], input="", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unknown chat template 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


HOSTILE_TEMPLATES = {  # a checkpoint's own template, written to cost time or memory
    "range": "{% for i in range(10**9) %}x{% endfor %}",
    "nested loops writing": "{% for i in range(100000) %}{% for j in range(100000) %}{{ messages[0].content }}"
                            "{% endfor %}{% endfor %}",
    "nested loops silent": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "loops over messages": "{% for a in messages %}{% for b in messages %}{% for c in messages %}{% for d in messages %}"
                           "{% endfor %}{% endfor %}{% endfor %}{% endfor %}",
    "string times": "{{ 'x' * 10**10 }}",
    "power": "{{ 7 ** 10000000 }}",
    "namespace doubling": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                          "{% endfor %}{{ ns.s|length }}",
    "macro doubling": "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('x', 60) }}",
    "macro buffer": "{% macro f() %}{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxxxxxxxx"
                    "{% endfor %}{% endfor %}{% endmacro %}{{ f()|length }}",
    "set block": "{% set x %}{% for i in range(100000) %}{% for j in range(100000) %}{{ 'y' * 100 }}{% endfor %}"
                 "{% endfor %}{% endset %}{{ x|length }}",
    "center": "{{ 'x'|center(10**9) }}",
    "percent width": "{{ '%1000000000s' % 'x' }}",
    "format width": "{{ '{:>1000000000}'.format('x') }}",
    "replace": "{% set s = 'a' * 1000000 %}{{ s|replace('', s)|length }}",
    "replace method": "{% set s = 'a' * 1000000 %}{{ s.replace('a', s)|length }}",
    "indent": "{% set s = '\\n' * 1000000 %}{{ s|indent(1000000)|length }}",
    "join": "{{ range(100000)|join('x' * 1000000) }}",
    "join of a generator": "{{ range(100000)|map('string')|join('x' * 1000000) }}",
    "join method": "{{ ('x' * 1000000).join(['a'] * 100000) }}",
    "wordwrap": "{{ ('a ' * 1000000)|wordwrap(1, true, 'x' * 1000000) }}",
    "translate": "{{ ('a' * 1000000).translate({97: 'x' * 1000000}) }}",
    "list doubling": "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
    "tojson indent": "{{ messages|tojson(indent=1000000) }}",
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "division": "{{ 1 / 0 }}",
}


@pytest.mark.parametrize("name", HOSTILE_TEMPLATES)
def test_hostile_templates_stop_with_one_error_in_bounded_time_and_memory(name, monkeypatch):
    import time
    import tracemalloc

    from llamalab import bounded_jinja

    monkeypatch.setattr(bounded_jinja, "MAX_SECONDS", 0.5)
    messages = [{"role": "user", "content": "hello"}] * (300 if name == "loops over messages" else 1)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(LlamalabError, match="chat template (stopped|failed)") as e:
            render(messages, HOSTILE_TEMPLATES[name])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 15 and peak < 200e6, (time.monotonic() - started, peak)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_a_looping_template_is_one_line_in_the_cli(smollm2_gguf, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text(HOSTILE_TEMPLATES["range"])
    out = subprocess.run([sys.executable, "-m", "llamalab", "generate", "--model", str(smollm2_gguf), "--chat",
                          "--template", str(template), "--prompt", "hi", "--max-new-tokens", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.startswith("llamalab generate: error: chat template stopped: ")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
