"""ollama's Modelfile syntax (models/modelfile.py): instructions, quoting, and one error line naming the line."""

from __future__ import annotations

import pytest

from llamalab.errors import LlamalabError
from llamalab.models.modelfile import from_fields, parse, render


def test_every_instruction_comments_and_triple_quotes():
    m = parse('''# a comment, then instructions in any case
from smol:q4
PARAMETER temperature 0.2
parameter top_k 20
PARAMETER stop "<|im_end|>"
PARAMETER stop END
PARAMETER num_ctx 1024
SYSTEM """You are terse.
   Keep "quotes" and indentation."""
MESSAGE user Is Paris in France?
MESSAGE assistant """Yes.
It is."""
TEMPLATE chatml
ADAPTER ./runs/ft/adapter
LICENSE """MIT
text"""
LICENSE Apache-2.0
''')
    assert (m.base, m.base_line) == ("smol:q4", 2)
    assert m.parameters == {"temperature": 0.2, "top_k": 20, "stop": ["<|im_end|>", "END"], "num_ctx": 1024}
    assert m.system == 'You are terse.\n   Keep "quotes" and indentation.'
    assert m.messages == [{"role": "user", "content": "Is Paris in France?"},
                          {"role": "assistant", "content": "Yes.\nIt is."}]
    assert (m.template, m.adapter, m.adapter_line, m.license) == ("chatml", "./runs/ft/adapter", 14, ["MIT\ntext",
                                                                                                      "Apache-2.0"])
    again = parse(render(m, "smol:q4"))  # what `models show` prints reads back the same
    assert (again.parameters, again.system, again.messages, again.template) == \
        (m.parameters, m.system, m.messages, m.template)


def test_a_jinja_template_is_kept():
    source = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert parse(f'FROM x\nTEMPLATE """{source}"""').template == source


@pytest.mark.parametrize("text, says", [
    ("FROM x\nFORM y", "Modelfile line 2: unknown instruction FORM; expected FROM, PARAMETER, SYSTEM, TEMPLATE, "
                       "ADAPTER, MESSAGE, LICENSE"),
    ("# only a comment\nSYSTEM hi", "Modelfile: no FROM line"),
    ("FROM x\n\nPARAMETER temprature 1", "Modelfile line 3: PARAMETER temprature: unknown parameter 'temprature'"),
    ("FROM x\nPARAMETER top_k 2.5", "Modelfile line 2: PARAMETER top_k: must be an integer, got '2.5'"),
    ("FROM x\nPARAMETER temperature nan", "Modelfile line 2: PARAMETER temperature: must be finite"),
    ("FROM x\nPARAMETER seed", "Modelfile line 2: PARAMETER seed: needs a value"),
    ('FROM x\nSYSTEM """open\nnever closed', 'Modelfile line 2: a """ value is never closed'),
    ("FROM x\nMESSAGE bot hello", "Modelfile line 2: MESSAGE role 'bot' is not one of system, user, assistant"),
    ("FROM x\nTEMPLATE {{ .System }} {{ .Prompt }}", "Modelfile line 2: TEMPLATE is a Go template"),
    ("FROM x\nTEMPLATE {% if %}", "Modelfile line 2: TEMPLATE is not valid Jinja"),
    ("FROM x\nTEMPLATE vicuna", "Modelfile line 2: TEMPLATE 'vicuna' is neither a template name"),
    ("FROM", "Modelfile line 1: FROM needs a value"),
])
def test_errors_name_the_line(text, says):
    with pytest.raises(LlamalabError) as e:
        parse(text)
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


def test_the_api_fields_are_checked_the_same_way():
    m = from_fields("smol", system="Be brief.", parameters={"temperature": 0, "stop": ["a", "b"], "num_predict": 8},
                    messages=[{"role": "user", "content": "hi"}], license="MIT")
    assert m.parameters == {"temperature": 0.0, "stop": ["a", "b"], "num_predict": 8} and m.license == ["MIT"]
    for parameters, says in [({"top_k": "many"}, "parameters.top_k: must be an integer"),
                             ({"num_predict": 1.5}, "parameters.num_predict: must be an integer"),
                             ({"mirostat": 1}, "parameters.mirostat: unknown parameter")]:
        with pytest.raises(LlamalabError, match=says):
            from_fields("smol", parameters=parameters)
    with pytest.raises(LlamalabError, match=r"messages\[0\]"):
        from_fields("smol", messages=[{"role": "bot", "content": "x"}])
