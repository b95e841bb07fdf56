"""Constrained decoding in the engine (`llamalab.grammar`): the tokenizer bridge against the tokenizers' own
encodings and transformers' byte table, batched sequences with different schemas (or none) checked by
`jsonschema`, the free one token for token as when it decodes alone, and bad schemas as one-line errors."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from llamalab import grammar
from llamalab.chat_templates import render_for
from llamalab.errors import LlamalabError
from llamalab.runtime import load_runnable
from llamalab.sampling import Sampler
from llamalab.serve import tools
from llamalab.serve.responses import Formatter
from llamalab.tokenizer.gguf import read_gguf_tokenizer_fields, tokenizer_from_gguf_fields

TEXT = 'Hello, wörld! {"a": [1, 2.5e-3]}\n\t日本語 🦙 <0x41> end  '
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3}},
    "required": ["name", "age", "pets"], "additionalProperties": False}
COLOR = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "bright": {"type": "boolean"}},
         "required": ["color", "bright"], "additionalProperties": False}


@pytest.fixture(scope="module")
def runnable(smollm2_gguf):
    return load_runnable(smollm2_gguf, dtype="float32")


def test_byte_level_vocabulary_is_transformers_byte_table(runnable):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tok = runnable.tokenizer
    table = {c: b for b, c in bytes_to_unicode().items()}
    ours = grammar.token_bytes(tok)
    ids = tok.tok.encode(TEXT, add_special_tokens=False).ids  # HF tokenizers itself
    assert b"".join(ours[i] for i in ids).decode() == TEXT
    sample = [i for i in range(0, 49152, 97) if i not in tok.tok.get_added_tokens_decoder()]
    assert [ours[i] for i in sample] == [bytes(table[c] for c in tok.tok.id_to_token(i)) for i in sample]
    assert ours[runnable.tokenizer.eos_id].startswith(b"\xff")  # a special token: no grammar produces it


def test_sentencepiece_vocabulary_round_trips_text(llama_spm_gguf):
    tok = tokenizer_from_gguf_fields(read_gguf_tokenizer_fields(llama_spm_gguf))
    ours = grammar.token_bytes(tok)
    ids = tok.sp.encode(TEXT)  # SentencePiece itself; byte fallback for the emoji
    assert any(tok.sp.is_byte(i) for i in ids)
    assert b"".join(ours[i] for i in ids).decode() == " " + TEXT  # the dummy prefix is a real space
    assert ours[tok.bos_id] == b"\xff<s>"


def _decode(engine, prompt, tok, seed, schema_or_none, max_new, temperature=1.0):
    g = grammar.compile_json(tok, schema_or_none) if schema_or_none is not False else None
    return engine.add(prompt, max_new_tokens=max_new, sampler=Sampler(temperature), stop_ids=tok.stop_ids,
                      generator=torch.Generator().manual_seed(seed), tokenizer=tok, grammar=g)


def test_one_batch_two_schemas_and_a_free_sequence(runnable):
    tok = runnable.tokenizer
    prompt = tok.encode(render_for(tok, [{"role": "user", "content": "Describe someone, as JSON."}]), bos=False)
    engine = runnable.engine(max_batch=4, max_len=len(prompt) + 160)
    seqs = [_decode(engine, prompt, tok, 1, PERSON, 150), _decode(engine, prompt, tok, 2, COLOR, 150),
            _decode(engine, prompt, tok, 3, None, 150), _decode(engine, prompt, tok, 4, False, 24, temperature=0)]
    while engine.step():
        pass
    for seq, schema in zip(seqs, (PERSON, COLOR, {"type": "object"})):
        assert seq.finish_reason == "stop", seq.text
        jsonschema.validate(json.loads(seq.text), schema)
    alone = runnable.engine(max_batch=1, max_len=len(prompt) + 30)
    free = _decode(alone, prompt, tok, 4, False, 24, temperature=0)
    while alone.step():
        pass
    assert seqs[3].tokens == free.tokens and not seqs[3].text.startswith("{")  # no mask leaked into its row


@pytest.mark.parametrize("schema, says", [
    ([1, 2], "must be a JSON object"),
    ({"type": "nonsense"}, "not a valid JSON schema at type"),
    ({"properties": {"a": {"minLength": -1}}}, "not a valid JSON schema at properties/a/minLength"),
    ({"type": "string", "pattern": "(?<=a)b"}, "cannot be compiled into a grammar: regex parse error"),
    ({"enum": ["x" * 70_000]}, "at most 65536"),
    ({"allOf": [json.loads('{"not":' * 30 + "{}" + "}" * 30)]}, "deeper than"),
])
def test_bad_schemas_are_one_line_errors(runnable, schema, says):
    with pytest.raises(LlamalabError) as e:
        grammar.compile_json(runnable.tokenizer, schema)
    assert says in str(e.value) and "\n" not in str(e.value)


WEATHER = [{"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.mark.parametrize("text, content, calls", [
    ('<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>', None, [{"city": "Oslo"}]),
    ('Let me check.\n<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>', "Let me check.",
     [{"city": "Oslo"}]),
    ('{"name": "weather", "parameters": {"city": "Rome"}}', None, [{"city": "Rome"}]),
    ('[{"name": "weather", "arguments": {"city": "A"}}, {"name": "weather", "arguments": "{\\"city\\": \\"B\\"}"}]',
     None, [{"city": "A"}, {"city": "B"}]),
    ('<tool_call>{"name": "weather", "arguments": {"city": "Oslo"</tool_call>', None, []),  # not JSON: text
    ('{"name": "unknown", "arguments": {}}', None, []),                                    # not a tool: text
    ("It is sunny.", None, []),
])
def test_tool_calls_parsed_or_left_as_text(text, content, calls):
    got_content, got = tools.parse(text, WEATHER)
    assert [json.loads(c["function"]["arguments"]) for c in got] == calls
    assert got_content == (content if calls else text)
    fmt = Formatter(chat=True, model="m", tokenizer=None, logprobs=False, tools=WEATHER)
    message, finish = fmt._message(text, "stop")
    assert finish == ("tool_calls" if calls else "stop") and (message.get("tool_calls") is not None) == bool(calls)


def test_required_call_schema_is_one_of_the_tools():
    two = WEATHER + [{"type": "function", "function": {"name": "time"}}]
    schema = tools.call_schema(two, "")
    jsonschema.validate({"name": "weather", "arguments": {"city": "x"}}, schema)
    jsonschema.validate({"name": "time", "arguments": {}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "weather", "arguments": {}}, schema)
    assert tools.call_schema(two, "time")["properties"]["name"] == {"const": "time"}


QWEN_LIKE = ("{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n"
             "</tools><|im_end|>\n{%- endif %}{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
             "{%- for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{%- endfor %}"
             "<|im_end|>\n{%- endfor %}<|im_start|>assistant\n")


def test_a_template_with_tools_renders_them_itself():
    from llamalab.chat_templates import render

    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "content": "rain", "tool_call_id": "c1"}]
    assert tools.uses_tools(QWEN_LIKE) and not tools.uses_tools("chatml")
    text = render(tools.conversation(messages, WEATHER, native=True), QWEN_LIKE, tools=WEATHER)
    assert json.dumps(WEATHER[0], ensure_ascii=False) in text  # the template's own tools section
    assert '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>' in text  # arguments as an object
    assert "<|im_start|>tool\nrain" in text and "You can call functions" not in text
    default = render(tools.conversation(messages, WEATHER, native=False), "chatml")
    assert default.startswith("<|im_start|>system\nYou can call functions") and "<tool_response>\nrain" in default
