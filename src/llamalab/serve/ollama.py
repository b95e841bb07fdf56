"""ollama's native API next to /v1, on the same scheduler and the same request checks.

    POST /api/chat  /api/generate   NDJSON lines as tokens come (`"stream": false`: one body), the last with
                                    done, done_reason and the timings (nanoseconds) and token counts
    GET  /api/tags  /api/ps  /api/version      POST /api/show  /api/copy      DELETE /api/delete
    POST /api/pull                  a 400: no registry is reachable; `llamalab models import` is the way

A request becomes the /v1 request it means (`ChatRequest`, `CompletionRequest` for `raw` generate) and goes
through the same checks (context, ranges, strict JSON). `options`: temperature, top_p, top_k, min_p, seed,
num_predict (-1: up to the context), stop, repeat_penalty; num_ctx is accepted up to the server's context.
Defaults are ollama's (temperature 0.8, top_k 40, top_p 0.9). This server answers for its one model
(`--model`); `keep_alive` is checked (a duration: "5m", "1h30m", seconds, -1 or 0) and reported by /api/ps.
/api/copy and /api/delete act on the model library. Errors are ollama's `{"error": "..."}` bodies. `images`
(base64, on a chat message or a generate body) go to a LLaVA checkpoint as /v1's data: URL parts would.

Structured outputs and tools: `format` "json" (any JSON object) or a JSON schema object constrains the answer
(`structured.py`); /api/chat's `tools` (OpenAI's function shape) work as on /v1 (`tools.py`, tool_choice
"auto"), the answer's calls coming back as `message.tool_calls` [{"function": {"name", "arguments": {...}}}]
(streamed: the whole answer in the last line before `done`); `role: "tool"` messages (with `tool_name`) and
assistant messages carrying `tool_calls` are accepted.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
import time
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool

from .. import library
from ..errors import LlamalabError
from . import tools as tool_calls
from .protocol import INT64, MAX_COUNT, MAX_STOP, MAX_STOP_CHARS, APIError, ChatRequest, CompletionRequest, Tool, \
    validation_message
from .scheduler import Job, QueueFull

DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?")


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class Options(_Body):
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.8
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.9
    top_k: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 40
    min_p: Annotated[float, Field(ge=0, le=1)] = 0.0
    repeat_penalty: Annotated[float, Field(gt=0, le=10)] = 1.0
    seed: Annotated[int, Field(ge=INT64[0], le=INT64[1])] | None = None
    num_predict: Annotated[int, Field(ge=-2, le=MAX_COUNT)] | None = None
    num_ctx: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None
    stop: Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP)] | None = None


class CalledFunction(_Body):
    name: StrictStr
    arguments: dict = {}


class ToolCall(_Body):
    function: CalledFunction


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr = ""
    images: list[StrictStr] | None = None  # base64, each
    tool_calls: list[ToolCall] | None = None
    tool_name: StrictStr | None = None

    def openai(self) -> dict:
        """The message in /v1's shape: its images as data: URL parts (the same reading and checks)."""
        out = {"role": self.role, "content": self.content}
        if self.images:
            out["content"] = [{"type": "image_url", "image_url": {"url": f"data:;base64,{b}"}}
                              for b in self.images] + [{"type": "text", "text": self.content}]
        if self.tool_calls:
            out["tool_calls"] = [{"id": f"call_{i}", "type": "function", "function": {
                "name": c.function.name, "arguments": json.dumps(c.function.arguments)}}
                for i, c in enumerate(self.tool_calls)]
        if self.role == "tool":
            out["tool_call_id"] = self.tool_name or ""
        return out


class _Request(_Body):
    model: StrictStr
    stream: bool = True
    options: Options = Options()
    keep_alive: StrictStr | int | float | None = None
    format: object = None
    images: list[StrictStr] | None = None  # base64, each (generate's)

    def response_format(self) -> dict | None:
        """`format` as /v1's response_format: "json" → json_object, a schema → json_schema."""
        if self.format in (None, ""):
            return None
        if self.format == "json":
            return {"type": "json_object"}
        if isinstance(self.format, dict):
            return {"type": "json_schema", "json_schema": {"name": "format", "schema": self.format}}
        raise APIError(400, f"format: must be \"json\" or a JSON schema object, got {json.dumps(self.format)[:80]}",
                       param="format")

    def refused(self) -> str | None:
        return None


class ChatBody(_Request):
    messages: list[Message] = []
    tools: list[Tool] | None = None

    def refused(self) -> str | None:
        return super().refused()


class GenerateBody(_Request):
    prompt: StrictStr = ""
    system: StrictStr | None = None
    raw: bool = False
    suffix: StrictStr | None = None
    template: StrictStr | None = None
    context: list | None = None

    def refused(self) -> str | None:
        if self.suffix:
            return "suffix (insertion) is not supported"
        if self.template:
            return "a per-request template is not supported; the model's own chat template is used"
        if self.context:
            return "context (token ids of an earlier answer) is not supported; use /api/chat"
        if self.raw and self.images:
            return "images need the chat template: raw is not supported with images"
        return super().refused()


class NameBody(_Body):
    model: StrictStr | None = None
    name: StrictStr | None = None  # the older field name

    def which(self) -> str:
        if not (self.model or self.name):
            raise APIError(400, "model: a model name is required", param="model")
        return self.model or self.name


class CopyBody(_Body):
    source: StrictStr
    destination: StrictStr


def keep_alive_seconds(value) -> float:
    """ollama's keep_alive as seconds (negative: forever): a number of seconds or a Go duration ("5m", "1h30m")."""
    if value is None:
        return 300.0
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    m = DURATION.fullmatch(text.removeprefix("-"))
    if text.removeprefix("-") and m and any(m.groups()):
        h, mi, s = (float(g or 0) for g in m.groups())
        return (-1 if text.startswith("-") else 1) * (h * 3600 + mi * 60 + s)
    raise APIError(400, f"keep_alive: {value!r} is not a duration; use e.g. \"5m\", \"1h\", \"30s\", a number of "
                        "seconds, 0 or -1", param="keep_alive")


async def _parse(request: Request, shape):
    try:
        return shape.model_validate_json(await request.body())
    except ValidationError as e:
        message, param = validation_message(list(e.errors()))
        raise APIError(400, message, param=param) from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class Ollama:
    """The /api routes' logic over the app's `Service` (its tokenizer, scheduler and settings)."""

    def __init__(self, service):
        self.service, self.model = service, service.model
        self.name = service.settings.name
        self.served = library.full_name(self.name) if library.looks_like_name(self.name) else self.name
        self.loaded_at = time.time()

    def check_model(self, name: str) -> None:
        if name in (self.name, self.served):
            return
        try:
            if library.full_name(name) == self.served:
                return
        except LlamalabError:
            pass
        raise APIError(404, f"model {name!r} not found; this server serves {self.served!r}", param="model")

    def _sampling(self, body: _Request) -> dict:
        """The options in /v1's names: the request's own, else the Modelfile's (`PARAMETER`), else ollama's."""
        params = self.service.preset.get("parameters") or {}
        o = body.options.model_copy(update={k: v for k, v in params.items()
                                            if k in Options.model_fields and k not in body.options.model_fields_set})
        if o.num_ctx is not None and o.num_ctx > self.service.context:
            raise APIError(400, f"options.num_ctx {o.num_ctx} exceeds this server's context of "
                                f"{self.service.context} tokens (serve --context)", param="options.num_ctx")
        return {"temperature": o.temperature, "top_p": o.top_p, "top_k": o.top_k, "min_p": o.min_p,
                "repetition_penalty": o.repeat_penalty, "seed": o.seed, "stop": o.stop,
                "max_tokens": o.num_predict if o.num_predict and o.num_predict > 0 else None}

    def job(self, body: _Request) -> Job | None:
        """The scheduler job for a chat or generate body; None for a load-only request (no prompt)."""
        self.check_model(body.model)
        refused = body.refused()
        if refused:
            raise APIError(400, refused)
        sampling = {**self._sampling(body), "response_format": body.response_format()}
        if isinstance(body, ChatBody):
            if not body.messages:
                return None
            messages = [m.openai() for m in body.messages]
            sampling["tools"] = body.tools
        elif not body.prompt:
            return None
        elif body.raw:
            return self.service.completion_job(CompletionRequest(prompt=body.prompt, **sampling))
        else:
            messages = ([{"role": "system", "content": body.system}] if body.system else []) + \
                [Message(role="user", content=body.prompt, images=body.images).openai()]
        return self.service.chat_job(ChatRequest(messages=messages, **sampling))

    def details(self) -> dict:
        return details(self._entry(), lambda: sum(p.numel() for p in self.model.parameters()))

    def _entry(self) -> dict:
        try:
            return library.manifest(self.served)
        except LlamalabError:
            return {}

    def tag(self) -> dict:
        return tag(self.served, self._entry(), self.details(), self.loaded_at)


def details(entry: dict, count=lambda: 0) -> dict:
    """ollama's `details` of a model from its library manifest (`count()`: its parameters when it has none)."""
    family = entry.get("family", "llama")
    return {"parent_model": entry.get("parent", ""), "format": entry.get("format", ""), "family": family,
            "families": [family], "parameter_size": _short(entry.get("parameters") or count()),
            "quantization_level": entry.get("quantization", "")}


def tag(name: str, entry: dict, info: dict | None = None, modified: float = 0.0) -> dict:
    """A model as /api/tags lists it."""
    when = datetime.fromtimestamp(entry.get("modified", modified), timezone.utc)
    return {"name": name, "model": name, "modified_at": when.isoformat(), "size": entry.get("size", 0),
            "digest": entry.get("digest", ""), "details": info or details(entry)}


def _short(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.{0 if n >= 10 * size else 1}f}{unit}"
    return str(n)


# ------------------------------------------------------------------------------------------ answering
def _final(o: Ollama, job: Job | None, started: float, reason: str) -> dict:
    now = time.perf_counter()
    first = (job.first_token if job and job.first_token else now)
    return {"done": True, "done_reason": reason, "total_duration": int((now - started) * 1e9),
            "load_duration": 0, "prompt_eval_count": job.prompt_tokens if job else 0,
            "prompt_eval_duration": int(max(first - started, 0) * 1e9),
            "eval_count": job.completion_tokens if job else 0, "eval_duration": int(max(now - first, 0) * 1e9)}


def _piece(o: Ollama, chat: bool, text: str, job: Job | None = None, reason: str = "") -> dict:
    """A line's body; with tools, the whole answer's (`reason` "stop") parsed for tool calls."""
    body = {"model": o.served, "created_at": _now()}
    if chat and job is not None and job.tools and reason == "stop":
        content, calls = tool_calls.parse(text, job.tools)
        if calls:
            return {**body, "message": {"role": "assistant", "content": content or "", "tool_calls": [
                {"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
                for c in calls]}}
    if chat:
        return {**body, "message": {"role": "assistant", "content": text}}
    return {**body, "response": text}


async def _answer(o: Ollama, request: Request, body: _Request, chat: bool):
    started = time.perf_counter()
    job = await run_in_threadpool(o.job, body)
    if job is None:  # ollama's way to load a model: nothing to answer
        return JSONResponse({**_piece(o, chat, ""), **_final(o, None, started, "load")})
    try:
        o.service.scheduler.submit(job)
    except QueueFull as e:
        raise APIError(429, str(e)) from None
    if body.stream:
        return StreamingResponse(_lines(o, job, chat, started), media_type="application/x-ndjson")
    text, reason = [], "stop"
    try:
        async for update in job.updates():
            if update.error:
                raise APIError(500, f"generation failed: {update.error}")
            text.append(update.text)
            reason = update.finish_reason or reason
    finally:
        o.service.scheduler.cancel(job)
    return JSONResponse({**_piece(o, chat, "".join(text), job, reason), **_final(o, job, started, reason)})


async def _lines(o: Ollama, job: Job, chat: bool, started: float):
    """NDJSON: one line per update, then the `done` line; a client that goes away cancels the job."""
    reason, held = "stop", []
    try:
        async for update in job.updates():
            if update.error:
                yield json.dumps({"error": f"generation failed: {update.error}"}) + "\n"
                return
            reason = update.finish_reason or reason
            if job.tools and chat:  # held back: the whole answer is parsed for tool calls at its end
                held.append(update.text)
            elif update.text:
                yield json.dumps({**_piece(o, chat, update.text), "done": False}, ensure_ascii=False) + "\n"
        if held:
            yield json.dumps({**_piece(o, chat, "".join(held), job, reason), "done": False}, ensure_ascii=False) + "\n"
        yield json.dumps({**_piece(o, chat, ""), **_final(o, job, started, reason)}) + "\n"
    finally:
        o.service.scheduler.cancel(job)


def of(service) -> Ollama:
    """The /api logic of a loaded model (made once per service)."""
    if getattr(service, "ollama", None) is None:
        service.ollama = Ollama(service)
    return service.ollama


async def _run(services, request: Request, shape, chat: bool):
    body = await _parse(request, shape)
    keep = keep_alive_seconds(body.keep_alive)  # garbage is a 400 before any load
    empty = not (body.messages if chat else body.prompt)
    if keep == 0 and empty and services.library:  # ollama's "unload now"
        name = services.name_of(body.model)
        await services.unload(name, reason="keep_alive 0")
        line = {"model": name, "created_at": _now(), **({"message": {"role": "assistant", "content": ""}} if chat
                                                         else {"response": ""}), "done": True, "done_reason": "unload"}
        return JSONResponse(line)
    async with services.use(body.model, keep) as service:
        return await _answer(of(service), request, body, chat)


def _ps_entry(e) -> dict:
    o = of(e.service)
    expires = datetime.fromtimestamp(e.expires, timezone.utc) if e.expires is not None else \
        datetime.now(timezone.utc) + timedelta(days=36500)  # no keep_alive given yet / negative: loaded for good
    return {**o.tag(), "size": e.size or o.tag()["size"], "expires_at": expires.isoformat(), "size_vram": 0,
            "context_length": e.service.context}


def _show(name: str, entry: dict, info: dict) -> dict:
    preset = entry.get("preset") or {}
    params = preset.get("parameters") or {}
    lines = [f"{k} {json.dumps(v)}" for k, vs in params.items() for v in (vs if k == "stop" else [vs])]
    return {"modelfile": entry.get("modelfile") or f"FROM {name}\n", "parameters": "\n".join(lines),
            "template": preset.get("template") or entry.get("template") or "", "system": preset.get("system") or "",
            "messages": preset.get("messages") or [], "license": entry.get("license") or "", "details": info,
            "model_info": {f"llama.{k}": v for k, v in entry.get("config", {}).items()},
            "capabilities": ["completion", "embedding"],
            "modified_at": tag(name, entry, info)["modified_at"]}


def add_routes(app: FastAPI, services, dependencies) -> None:
    @app.post("/api/chat", dependencies=dependencies)
    async def chat(request: Request):
        return await _run(services, request, ChatBody, chat=True)

    @app.post("/api/generate", dependencies=dependencies)
    async def generate(request: Request):
        return await _run(services, request, GenerateBody, chat=False)

    @app.get("/api/tags", dependencies=dependencies)
    async def tags():
        if services.library:
            return {"models": [tag(e["name"], e) for e in library.entries()]}
        return {"models": [of(services.service).tag()]}

    @app.get("/api/ps", dependencies=dependencies)
    async def ps():
        return {"models": [_ps_entry(e) for e in services.loaded()]}

    @app.get("/api/version")
    async def version():
        try:
            return {"version": package_version("llamalab")}
        except PackageNotFoundError:
            return {"version": "unknown"}

    @app.post("/api/show", dependencies=dependencies)
    async def show(request: Request):
        name = (await _parse(request, NameBody)).which()
        if services.library:
            full = services.name_of(name)
            entry = library.manifest(full)
            return _show(full, entry, details(entry))
        o = of(services.service)
        o.check_model(name)
        shown = _show(o.served, o._entry(), o.details())
        if services.service.vision is not None:
            shown["capabilities"].append("vision")
        return shown

    @app.post("/api/copy", dependencies=dependencies)
    async def copy(request: Request):
        body = await _parse(request, CopyBody)
        _library(library.copy, body.source, body.destination)
        return JSONResponse({})

    @app.delete("/api/delete", dependencies=dependencies)
    async def delete(request: Request):
        name = (await _parse(request, NameBody)).which()
        _library(library.remove, name)
        if services.library:  # a loaded model goes with its name
            await services.unload(library.full_name(name), reason="deleted")
        return JSONResponse({})

    @app.post("/api/pull", dependencies=dependencies)
    async def pull(request: Request):
        raise APIError(400, "no model registry is reachable from this server; put the checkpoint on this machine "
                            "and run `llamalab models import PATH --name NAME`")


def _library(action, *names) -> None:
    try:
        action(*names)
    except LlamalabError as e:
        raise APIError(404 if "no model named" in str(e) else 400, str(e)) from None
