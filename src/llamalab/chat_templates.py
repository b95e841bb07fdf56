"""Prompt and chat templates: a conversation (a list of {"role", "content"} messages) → prompt text.

Named templates: "alpaca" (Stanford Alpaca's instruction prompt), "llama-2" (Meta's `[INST]` chat
format), "chatml" (`<|im_start|>role ... <|im_end|>`). Any other template is Jinja source — a
checkpoint's own (GGUF `tokenizer.chat_template`, HF `tokenizer_config.json`) — rendered in the same
sandbox, with the same helpers, as transformers' `apply_chat_template`, and bounded in time and output size
(`bounded_jinja`: a template that loops for ever or writes gigabytes is one LlamalabError, a 400 in the server).

Rendered text carries special tokens as text (`<s>`, `<|im_start|>`), so encode it with bos=False:
the template itself decides where BOS goes.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext

from .bounded_jinja import BoundedEnvironment, RenderLimit, render_bounded
from .errors import LlamalabError

# Stanford Alpaca, train.py PROMPT_DICT (the response follows "### Response:" directly)
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def alpaca_prompt(instruction: str, input: str | None = None) -> str:
    """The Alpaca prompt for one instruction (and optional input)."""
    if input:
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def _alternating(messages: list[dict], template: str) -> tuple[str | None, list[dict]]:
    """(system prompt or None, the user/assistant turns), checking they alternate starting with user."""
    system = None
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    for i, m in enumerate(messages):
        if m["role"] != ("user", "assistant")[i % 2]:
            raise LlamalabError(f"the {template} template needs user/assistant turns alternating from a user turn "
                                f"(after an optional system message); message {i} has role {m['role']!r}")
    return system, messages


def alpaca(messages, add_generation_prompt=True, bos_token="", eos_token="", **_) -> str:
    """Each user turn is an Alpaca instruction (its optional "input" key is the input); each answer is
    followed by EOS as in Alpaca's training targets. A system message has no place in Alpaca."""
    system, turns = _alternating(messages, "alpaca")
    if system is not None:
        raise LlamalabError("the alpaca template has no system prompt; drop --system or pick another template")
    out = []
    for m in turns:
        if m["role"] == "user":
            out.append(("\n\n" if out else "") + alpaca_prompt(m["content"], m.get("input")))
        else:
            out.append(m["content"] + eos_token)
    return "".join(out)


def llama2(messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>", **_) -> str:
    """Meta's `Llama.chat_completion`: the system prompt is folded into the first user turn inside
    <<SYS>>; each exchange is `<s>[INST] user [/INST] answer </s>`, the open turn `<s>[INST] user [/INST]`."""
    system, turns = _alternating(messages, "llama-2")
    turns = [dict(m) for m in turns]
    if system is not None and turns:
        turns[0]["content"] = f"<<SYS>>\n{system}\n<</SYS>>\n\n{turns[0]['content']}"
    out = []
    for i in range(0, len(turns), 2):
        user = turns[i]["content"].strip()
        if i + 1 < len(turns):
            out.append(f"{bos_token}[INST] {user} [/INST] {turns[i + 1]['content'].strip()} {eos_token}")
        else:
            out.append(f"{bos_token}[INST] {user} [/INST]")
    return "".join(out)


def chatml(messages, add_generation_prompt=True, **_) -> str:
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


TEMPLATES = {"alpaca": alpaca, "llama-2": llama2, "chatml": chatml}


@lru_cache(maxsize=16)
def compile_jinja(source: str):
    """A Jinja chat template compiled the way transformers compiles it (sandboxed, trim/lstrip blocks)."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # no HTML escaping
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.add_filter("tojson", tojson)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise LlamalabError(f"chat template has a Jinja syntax error at line {e.lineno}: {e.message}") from None


def render(messages: list[dict], template: str, add_generation_prompt: bool = True, **variables) -> str:
    """The prompt text for `messages`. `template`: a name in TEMPLATES or Jinja source.
    `variables` (bos_token, eos_token, tools, ...) are visible to the template."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise LlamalabError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
    if template in TEMPLATES:
        return TEMPLATES[template](messages, add_generation_prompt=add_generation_prompt, **variables)
    compiled = compile_jinja(template)
    try:
        return render_bounded(compiled, messages=messages, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateError as e:
        raise LlamalabError(f"chat template refused the conversation: {e}") from None
    except RenderLimit as e:
        raise LlamalabError(f"chat template stopped: {e}; check the template or shorten the conversation") from None
    except (RecursionError, MemoryError) as e:
        raise LlamalabError(f"chat template stopped: {type(e).__name__} (it recurses too deep or needs too much "
                            "memory); check the template") from None
    except Exception as e:  # the template's own fault (a TypeError, a division by zero, ...), never a traceback
        raise LlamalabError(f"chat template failed on the conversation: {type(e).__name__}: {str(e)[:200]}") from None


def resolve_template(name: str | None, tokenizer=None) -> str:
    """A template name, a path to a Jinja file, Jinja source, or None for the checkpoint's own template."""
    if name in (None, "auto", "checkpoint"):
        source = getattr(tokenizer, "chat_template", None)
        if not source:
            raise LlamalabError(f"the checkpoint has no chat template; choose one with --template "
                                f"({', '.join(TEMPLATES)}, or a Jinja file)")
        return source
    if name in TEMPLATES or "{{" in name or "{%" in name:
        return name
    if Path(name).is_file():
        return Path(name).read_text(encoding="utf-8")
    raise LlamalabError(f"unknown chat template {name!r}; use one of {', '.join(TEMPLATES)}, a Jinja file, "
                        f"or leave it out for the checkpoint's own template")


def render_for(tokenizer, messages: list[dict], template: str | None = None, add_generation_prompt: bool = True) -> str:
    """`render` with the tokenizer's BOS/EOS strings and (by default) the checkpoint's template."""
    return render(messages, resolve_template(template, tokenizer), add_generation_prompt,
                  bos_token=getattr(tokenizer, "bos_token", None) or "",
                  eos_token=getattr(tokenizer, "eos_token", None) or "")
