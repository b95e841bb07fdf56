"""OpenAI's API shapes: request bodies (validated with pydantic, strict types) and error bodies.

Bodies are parsed by pydantic's own JSON parser, strictly: NaN and Infinity are refused (bare `NaN` in the
JSON too), strings must be valid Unicode (a lone surrogate such as "\\ud800" is invalid JSON), nesting is
bounded, and every number has a range. `seed` is a signed 64-bit integer, as in vLLM (a larger one is a
400, not reduced).

Fields we accept beyond OpenAI's are vLLM's names for the same sampling controls (`top_k`, `min_p`,
`repetition_penalty`). Unknown fields are ignored, as clients send vendor extras; fields OpenAI has but
this server does not implement are refused when they would change the answer (a non-zero
`presence_penalty`, `echo`, ...), never silently dropped.

Structured outputs and tools (OpenAI's shapes; checked further, and compiled, in `structured.py`/`tools.py`):
`response_format` {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}}
on both routes; `tools` [{"type": "function", "function": {"name", "description", "parameters"}}] and
`tool_choice` ("auto" | "none" | "required" | {"type": "function", "function": {"name"}}) on chat, whose
messages may be `role: "tool"` (with `tool_call_id`) or an assistant turn carrying `tool_calls`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

MAX_STOP = 4          # stop strings per request (OpenAI's limit)
MAX_STOP_CHARS = 256  # characters per stop string
MAX_TOP_LOGPROBS = 20
INT64 = (-(1 << 63), (1 << 63) - 1)  # seed's range (vLLM's: torch.long)
MAX_COUNT = (1 << 31) - 1             # token counts and top_k: anything larger is no count a model has


class APIError(Exception):
    """An error answered with OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             408: "invalid_request_error", 413: "invalid_request_error", 421: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class JSONSchemaFormat(_Body):
    name: StrictStr | None = None
    description: StrictStr | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Body):
    type: StrictStr  # "text" | "json_object" | "json_schema" (another: a 400 naming these)
    json_schema: JSONSchemaFormat | None = None


class Function(_Body):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: StrictStr | None = None
    parameters: dict | None = None
    strict: StrictBool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: Function


class ChosenFunction(_Body):
    name: StrictStr


class ToolChoice(_Body):
    type: Literal["function"]
    function: ChosenFunction


class CalledFunction(_Body):
    name: StrictStr
    arguments: StrictStr  # JSON text, as OpenAI sends it


class ToolCall(_Body):
    id: StrictStr = ""
    type: Literal["function"] = "function"
    function: CalledFunction


class Sampling(_Body):
    """The fields /v1/completions and /v1/chat/completions share."""

    model: StrictStr | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1, le=MAX_COUNT)] | None = None   # vLLM: -1 or 0 = off
    min_p: Annotated[float, Field(ge=0, le=1)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] = 1.0
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stop: StrictStr | Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]],
                                Field(max_length=MAX_STOP)] | None = None
    seed: Annotated[int, Field(ge=INT64[0], le=INT64[1])] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    ignore_eos: bool = False  # vLLM's: decode past the end-of-sequence token (benchmarks want fixed lengths)
    response_format: ResponseFormat | None = None

    def unsupported(self) -> str | None:
        """The first field set to something this server cannot do, as a message."""
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty and frequency_penalty are not supported; use repetition_penalty"
        if self.logit_bias:
            return "logit_bias is not supported"
        return None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ImageURL(_Body):
    url: StrictStr
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | Annotated[list[Part], Field(min_length=1)] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: StrictStr | None = None     # a tool's answer: to which call

    def text(self, mark: str | None = None) -> str:
        """The content as text; with `mark`, the message's images go in front as that mark each, followed by a
        line break (llava-1.5's chat template's order, and `generate --image`'s)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        text = "".join(part.text for part in self.content if isinstance(part, TextPart))
        return f"{mark}\n" * len(self.images()) + text if mark else text

    def images(self) -> list[str]:
        """The URLs of the message's images, in order."""
        if not isinstance(self.content, list):
            return []
        return [part.image_url.url for part in self.content if isinstance(part, ImagePart)]


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["auto", "none", "required"] | ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None

    def conversation(self, mark: str | None = None) -> list[dict]:
        """The messages as the chat template takes them (`developer` is OpenAI's newer `system`); tool calls
        and tool answers in transformers' shape (`tools.conversation` adapts them to the template); with
        `mark`, each image is that mark (see `Message.text`)."""
        out = []
        for m in self.messages:
            message = {"role": "system" if m.role == "developer" else m.role, "content": m.text(mark)}
            if m.tool_calls:
                message["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                    "name": c.function.name, "arguments": c.function.arguments}} for c in m.tool_calls]
            if m.tool_call_id is not None:
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        return out

    def images(self) -> list[str]:
        return [url for m in self.messages for url in m.images()]


TokenIds = Annotated[list[StrictInt], Field(min_length=1)]


class CompletionRequest(Sampling):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] | TokenIds | \
        Annotated[list[TokenIds], Field(min_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool = False
    suffix: StrictStr | None = None
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo is not supported"
        if self.suffix:
            return "suffix (insertion) is not supported"
        if self.best_of is not None and self.best_of != self.n:
            return "best_of is not supported"
        return super().unsupported()

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


SHAPES = {  # what a union-typed field takes, for one readable message instead of one per union branch
    "prompt": "a string, a list of strings, a list of token ids, or a list of lists of token ids",
    "stop": f"a string or a list of at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters",
    "content": "a string or a list of {\"type\": \"text\", \"text\": ...} and {\"type\": \"image_url\", "
               "\"image_url\": {\"url\": \"data:image/png;base64,...\"}} parts",
    "tool_choice": "\"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One line for pydantic's (or FastAPI's) validation errors, and the parameter it is about."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if not loc:
        return f"the request body must be a JSON object: {first.get('msg')}", None
    # field names and list indices, without pydantic's names for union branches ("str", "list[...]")
    path = [x for x in loc if not (x.startswith(("list[", "function-", "constrained-")) or x in ("str", "int"))]
    field = next((x for x in reversed(path) if x in SHAPES), None)
    if field is not None:
        param = ".".join(path[:path.index(field) + 1])
        return f"{param}: must be {SHAPES[field]}", param
    param = ".".join(path)
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{param}: {first.get('msg')}{more}", param
