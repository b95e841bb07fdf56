"""ollama's Modelfile: a model built on another, with its own parameters, system prompt and conversation.

    FROM smollm2                       # a library name, or a path (relative to the Modelfile's directory)
    PARAMETER temperature 0.2          # temperature top_p top_k min_p seed num_predict num_ctx repeat_penalty stop
    PARAMETER stop "<|im_end|>"        # stop is repeatable
    SYSTEM \"\"\"You are terse.
    Answer in one line.\"\"\"              # triple quotes: a value over several lines
    MESSAGE user Hi                    # a conversation every chat starts with (user / assistant / system)
    MESSAGE assistant Hello.
    ADAPTER ./my-lora                  # a LoRA adapter directory (ours or peft's), run unmerged
    TEMPLATE chatml                    # a template name (chatml, llama-2, alpaca) or Jinja source
    LICENSE \"\"\"Apache-2.0\"\"\"

Instructions are case-insensitive; `#` starts a comment line. TEMPLATE in ollama is a Go template, which
llamalab does not run: a Go template (`{{ .Prompt }}`, `{{ range .Messages }}`, ...) is refused with its line,
and a model keeps its checkpoint's own (Jinja) chat template unless TEMPLATE names one of ours or gives Jinja.
Every error names the line: "Modelfile line 3: unknown instruction FORM; expected FROM, PARAMETER, ...".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..chat_templates import TEMPLATES, compile_jinja
from ..errors import LlamalabError

INSTRUCTIONS = ("FROM", "PARAMETER", "SYSTEM", "TEMPLATE", "ADAPTER", "MESSAGE", "LICENSE")
PARAMETERS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "seed": int,
              "num_predict": int, "num_ctx": int, "repeat_penalty": float, "stop": str}
ROLES = ("system", "user", "assistant")
GO_TEMPLATE = re.compile(r"\{\{-?\s*(\.|range\s|if\s|end\b|else\b|with\s|template\s|block\s|define\s)")


@dataclass
class Modelfile:
    base: str | None = None                     # FROM
    base_line: int = 0
    parameters: dict = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    adapter: str | None = None
    adapter_line: int = 0
    messages: list[dict] = field(default_factory=list)
    license: list[str] = field(default_factory=list)


def _value(text: str, lines: list[str], i: int) -> tuple[str, int]:
    """The value starting at `text` on line i (0-based): triple-quoted over several lines, quoted, or bare."""
    if text.startswith('"""'):
        rest = text[3:]
        parts, j = [], i
        while '"""' not in rest:
            parts.append(rest)
            j += 1
            if j >= len(lines):
                raise LlamalabError(f"Modelfile line {i + 1}: a \"\"\" value is never closed; end it with \"\"\"")
            rest = lines[j]
        body, _, after = rest.partition('"""')
        if after.strip():
            raise LlamalabError(f"Modelfile line {j + 1}: text after the closing \"\"\": {after.strip()[:40]!r}")
        return "\n".join(parts + [body]), j
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return text[1:-1].replace('\\"', '"'), i
    return text, i


def _parameter(m: Modelfile, value: str, line: int) -> None:
    key, _, raw = value.partition(" ")
    set_parameter(m, key, raw.strip(), f"Modelfile line {line}: PARAMETER {key.lower()}")


def set_parameter(m: Modelfile, key: str, raw, where: str) -> None:
    """Set parameter `key` to `raw` (text or a JSON value), checked; `where` begins the error message."""
    key = key.lower()
    if key not in PARAMETERS:
        raise LlamalabError(f"{where}: unknown parameter {key!r}; expected one of {', '.join(PARAMETERS)}")
    if raw in ("", None):
        raise LlamalabError(f"{where}: needs a value")
    if key == "stop":
        m.parameters.setdefault("stop", []).extend([raw] if isinstance(raw, str) else [str(x) for x in raw])
        return
    kind = PARAMETERS[key]
    try:
        if isinstance(raw, bool) or (kind is int and isinstance(raw, float)):
            raise ValueError
        number = kind(raw)
    except (ValueError, TypeError):
        raise LlamalabError(f"{where}: must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise LlamalabError(f"{where}: must be finite, got {raw!r}")
    m.parameters[key] = number


def from_fields(base: str, *, system=None, template=None, parameters=None, messages=None, license=None) -> Modelfile:
    """A Modelfile of ollama's /api/create fields (`from`, `system`, `parameters`, ...), checked as parse checks."""
    m = Modelfile(base=base, system=system, messages=[])
    for key, value in (parameters or {}).items():
        set_parameter(m, key, value, f"parameters.{key}")
    if template is not None:
        m.template = check_template(template, "template")
    for i, x in enumerate(messages or []):
        if not isinstance(x, dict) or x.get("role") not in ROLES or not isinstance(x.get("content"), str):
            raise LlamalabError(f"messages[{i}]: must be {{\"role\": {'|'.join(ROLES)}, \"content\": text}}")
        m.messages.append({"role": x["role"], "content": x["content"]})
    m.license = [license] if isinstance(license, str) else list(license or [])
    return m


def check_template(text: str, where: str) -> str:
    """A TEMPLATE value we can run: one of our names, or Jinja source that compiles; a Go template is refused."""
    if text.strip() in TEMPLATES:
        return text.strip()
    if GO_TEMPLATE.search(text):
        raise LlamalabError(f"{where}: TEMPLATE is a Go template (ollama's), which llamalab does not "
                            f"run; give a template name ({', '.join(TEMPLATES)}) or Jinja source, or leave TEMPLATE "
                            "out to keep the checkpoint's own")
    if "{{" not in text and "{%" not in text:
        raise LlamalabError(f"{where}: TEMPLATE {text[:40]!r} is neither a template name "
                            f"({', '.join(TEMPLATES)}) nor Jinja source")
    try:
        compile_jinja(text)
    except Exception as e:  # jinja2's syntax errors, one line
        raise LlamalabError(f"{where}: TEMPLATE is not valid Jinja: {str(e)[:200]}") from None
    return text


def _apply(m: Modelfile, word: str, value: str, line: int) -> None:
    if word == "FROM":
        m.base, m.base_line = value, line
    elif word == "PARAMETER":
        _parameter(m, value, line)
    elif word == "SYSTEM":
        m.system = value
    elif word == "TEMPLATE":
        m.template = check_template(value, f"Modelfile line {line}")
    elif word == "ADAPTER":
        m.adapter, m.adapter_line = value, line
    elif word == "LICENSE":
        m.license.append(value)
    else:  # MESSAGE role content
        role, _, content = value.partition(" ")
        if role.lower() not in ROLES:
            raise LlamalabError(f"Modelfile line {line}: MESSAGE role {role!r} is not one of {', '.join(ROLES)}")
        m.messages.append({"role": role.lower(), "content": content})


def parse(text: str) -> Modelfile:
    """The Modelfile `text`, checked; LlamalabError naming the line for anything wrong."""
    lines, m, i = text.splitlines(), Modelfile(), 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            if word.upper() not in INSTRUCTIONS:
                raise LlamalabError(f"Modelfile line {i + 1}: unknown instruction {word}; expected "
                                    f"{', '.join(INSTRUCTIONS)}")
            rest = rest.strip()
            if word.upper() in ("PARAMETER", "MESSAGE"):  # NAME VALUE: the value may be quoted
                head, _, tail = rest.partition(" ")
                value, end = _value(tail.strip(), lines, i)
                value = f"{head} {value}".strip()
            else:
                value, end = _value(rest, lines, i)
            if not value.strip() and word.upper() != "SYSTEM":
                raise LlamalabError(f"Modelfile line {i + 1}: {word.upper()} needs a value")
            _apply(m, word.upper(), value, i + 1)
            i = end
        i += 1
    if m.base is None:
        raise LlamalabError("Modelfile: no FROM line; start with FROM NAME (a library model) or FROM PATH "
                            "(a checkpoint)")
    return m


def render(m: Modelfile, base: str) -> str:
    """The Modelfile text of a created model (what `models show` and /api/show print)."""
    out = [f"FROM {base}"]
    for key, value in m.parameters.items():
        out += [f"PARAMETER {key} {json_str(v)}" for v in value] if key == "stop" else [f"PARAMETER {key} {value}"]
    if m.system is not None:
        out.append(f'SYSTEM """{m.system}"""')
    if m.template is not None:
        out.append(f'TEMPLATE """{m.template}"""')
    if m.adapter:
        out.append(f"ADAPTER {m.adapter}")
    out += [f'MESSAGE {x["role"]} """{x["content"]}"""' for x in m.messages]
    out += [f'LICENSE """{text}"""' for text in m.license]
    return "\n".join(out) + "\n"


def json_str(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'
