"""Structured outputs: a request's `response_format` (or a required tool call) → the grammar its tokens follow.

    {"type": "text"} or none         free text
    {"type": "json_object"}          any JSON object (OpenAI asks the prompt to mention JSON; we do not)
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}
                                     JSON valid against the schema, strict or not (always enforced)

ollama's `format` maps onto these: "json" is json_object, a schema object is json_schema. Every problem is a
400 with one line: an unknown type, json_schema without a schema, a schema that is no valid JSON schema
(its metaschema, `jsonschema`), too large or too deep, or one llguidance cannot compile (its message).
An answer cut by max_tokens ends with finish_reason "length" and may be incomplete JSON.
"""

from __future__ import annotations

from ..errors import LlamalabError
from ..grammar import Grammar, compile_json
from .protocol import APIError, ResponseFormat
from .tools import call_schema

TYPES = ("text", "json_object", "json_schema")


def response_grammar(tokenizer, fmt: ResponseFormat | None, tools: list[dict], forced: str | None) -> Grammar | None:
    """The grammar for a request (None: free text); APIError 400 for a format or schema we cannot follow."""
    if fmt is not None and fmt.type not in TYPES:
        raise APIError(400, f"response_format.type: {fmt.type!r} is not supported; use one of {', '.join(TYPES)}",
                       param="response_format")
    constrained = fmt is not None and fmt.type != "text"
    if forced is not None and constrained:
        raise APIError(400, "response_format and a required tool call both constrain the answer; drop one",
                       param="response_format")
    try:
        if forced is not None:
            return compile_json(tokenizer, call_schema(tools, forced), "the tools' call schema")
        if not constrained:
            return None
        if fmt.type == "json_object":
            return compile_json(tokenizer, None)
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise APIError(400, "response_format.json_schema.schema: a JSON schema is required for type "
                                "json_schema", param="response_format.json_schema")
        return compile_json(tokenizer, fmt.json_schema.schema_, "response_format.json_schema.schema")
    except LlamalabError as e:
        raise APIError(400, str(e), param="response_format" if forced is None else "tools") from None
