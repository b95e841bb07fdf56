"""Tool calls: the tool list into the prompt, the model's answer back into `tool_calls`.

Rendering. A chat template that mentions `tools` gets them as transformers' `apply_chat_template` gives them:
the `tools` variable (a list of {"type": "function", "function": {...}}), assistant turns with `tool_calls`
(arguments as objects) and `role: "tool"` turns as they are. Any other template (SmolLM2's, chatml, llama-2)
gets the default: DEFAULT_PROMPT (the tools as JSON inside <tools></tools>, Hermes' format) at the head of
the system message, an assistant turn's calls written back as `<tool_call>{...}</tool_call>` text, and a
tool's answer as a user turn `<tool_response>...</tool_response>`.

Parsing (`parse`): the answer's `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Hermes'
format, Qwen's too; the text outside them is the message's content), or else an answer that is nothing but
one such JSON object (or a list of them; "parameters" is taken for "arguments"). Every call must name one
of the request's tools, with arguments a JSON object; otherwise — text that is not JSON, an unknown name —
the whole answer is plain content with finish_reason "stop" (never an error).

tool_choice: "auto" (default with tools): the model chooses; "none": the tools are not shown and nothing is
parsed; "required" or a named function: the answer is constrained by a grammar to one bare JSON call
{"name": one of the tools (or the named one), "arguments": an object valid against its parameters}.
"""

from __future__ import annotations

import json
import re
import uuid

from ..errors import LlamalabError
from ..grammar import check_schema

DEFAULT_PROMPT = (
    "You can call functions. The available functions, as JSON schemas:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with a JSON object holding its name and its arguments inside <tool_call></tool_call> "
    "tags, e.g.:\n<tool_call>\n{{\"name\": \"<function name>\", \"arguments\": {{\"<argument>\": \"<value>\"}}}}\n"
    "</tool_call>")
BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)


def checked(tools, tool_choice) -> tuple[list[dict], str | None]:
    """(the tools as dicts, the function a call is forced to: "" = any of them, None = not forced).
    A tool's parameters must be a valid JSON schema; a named tool_choice must name one of the tools."""
    tools = [t.model_dump(exclude_none=True) for t in tools or []]
    for i, t in enumerate(tools):
        params = t["function"].get("parameters")
        if params is not None:
            check_schema(params, f"tools[{i}].function.parameters")
    names = [t["function"]["name"] for t in tools]
    if tool_choice is None or tool_choice in ("auto", "none"):
        return (tools if tool_choice != "none" else []), None
    if not tools:
        raise LlamalabError("tool_choice asks for a tool call but no tools are given")
    if tool_choice == "required":
        return tools, ""
    if tool_choice.function.name not in names:
        raise LlamalabError(f"tool_choice names the function {tool_choice.function.name!r}, which is not among "
                            f"the tools ({', '.join(names)})")
    return tools, tool_choice.function.name


def call_schema(tools: list[dict], only: str) -> dict:
    """The JSON schema of one call: {"name": a tool's name, "arguments": its parameters}, any tool or `only`."""
    options = []
    for t in tools:
        f = t["function"]
        if only and f["name"] != only:
            continue
        options.append({"type": "object", "properties": {"name": {"const": f["name"]},
                                                          "arguments": f.get("parameters") or {"type": "object"}},
                        "required": ["name", "arguments"], "additionalProperties": False})
    return options[0] if len(options) == 1 else {"anyOf": options}


def uses_tools(template: str) -> bool:
    """Whether a (Jinja) chat template renders a `tools` variable itself."""
    return ("{{" in template or "{%" in template) and re.search(r"\btools\b", template) is not None


def conversation(messages: list[dict], tools: list[dict], native: bool) -> list[dict]:
    """The messages for the template: as they are (a template with its own tools section, which gets
    `tools=`), or in the default format described above."""
    if native:
        out = []
        for m in messages:
            if m.get("tool_calls"):
                m = {**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": _arguments(c)}}
                                         for c in m["tool_calls"]]}
            out.append(m)
        return out
    out = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
        elif m.get("tool_calls"):
            calls = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                            "arguments": _arguments(c)}) + "\n</tool_call>"
                              for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (m["content"] + "\n" if m["content"] else "") + calls})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools:
        block = DEFAULT_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": block + "\n\n" + out[0]["content"]}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _arguments(call: dict):
    """An earlier call's arguments as an object (OpenAI sends JSON text); text that is no JSON stays text."""
    args = call["function"].get("arguments")
    try:
        return json.loads(args) if isinstance(args, str) else args
    except ValueError:
        return args


def parse(text: str, tools: list[dict]) -> tuple[str | None, list[dict]]:
    """(content, tool calls in OpenAI's shape) of an answer; no calls when it is not a valid call."""
    names = {t["function"]["name"] for t in tools}
    blocks = BLOCK.findall(text)
    if blocks:
        found = [_call(b, names) for b in blocks]
        content = BLOCK.sub("", text).strip() or None
    else:
        try:
            whole = json.loads(text)
        except ValueError:
            return text, []
        found = [_call(x, names) for x in (whole if isinstance(whole, list) and whole else [whole])]
        content = None
    if not found or any(c is None for c in found):
        return text, []
    return content, found


def _call(raw, names: set[str]) -> dict | None:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw.strip())
        except ValueError:
            return None
    if not isinstance(raw, dict) or raw.get("name") not in names:
        return None
    args = raw.get("arguments", raw.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": raw["name"], "arguments": json.dumps(args, ensure_ascii=False)}}
