"""The FastAPI app: OpenAI's /v1 routes on the continuous-batching scheduler, plus /health, /metrics and
the chat page at /.

On a LLaVA checkpoint (`vision=`), chat messages may hold images as OpenAI `image_url` parts with data: URLs
(an http(s) URL is refused: the server fetches nothing); each image is read bounded (`images`: encoded size,
then the pixel count before decoding), its features spliced into the prompt's rows, and the request decodes
on the same engine as any other.

    app = create_app(model, tokenizer, Settings(name="smollm2"))   # then run it with any ASGI server

Every error is an OpenAI error body with a 4xx status (5xx only for the server's own faults); request
bodies are bounded in size and time before they are parsed and a foreign `Host` is refused (guard.py);
with an API key, /v1 needs `Authorization: Bearer KEY` (/health, /metrics and the page do not: the page
asks for the key and sends it).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import library
from ..chat_templates import render, resolve_template
from ..errors import LlamalabError
from ..generate import Engine
from ..images import MAX_IMAGE_BYTES, data_url_bytes, open_image
from ..runtime import load_runnable
from ..runtime.preset import conversation
from ..runtime.vision import ImageInput, image_input
from ..sampling import Sampler
from . import embeddings, ollama, ollama_create, page, tools
from .guard import MAX_BODY, Guard
from .metrics import Metrics
from .mirror import Leader
from .pool import Budget, Fixed, Pool
from .protocol import APIError, ChatRequest, CompletionRequest, Sampling, validation_message
from .responses import Choice, Formatter
from .scheduler import Job, Params, QueueFull, Scheduler
from .structured import response_grammar

log = logging.getLogger("llamalab.serve")

IMAGE_BODY = 2 * MAX_IMAGE_BYTES  # a vision model's request bodies may be this much larger (images in base64)


@dataclass
class Settings:
    name: str                    # the model id clients ask for
    max_batch: int = 8           # sequences decoding together
    max_queue: int = 64          # sequences waiting for a slot before 429
    context: int = 2048          # KV-cache positions per slot (prompt + answer)
    api_key: str | None = None
    template: str | None = None  # chat template: name / Jinja source; None = the checkpoint's own
    ui: bool = True              # the chat page at /
    mirrored: bool = False       # tensor parallelism: the other ranks run every engine operation too (`mirror`)
    compile: bool = False        # the decode step through torch.compile, compiled before the first request
    allowed_hosts: tuple[str, ...] | None = None  # Host names answered (421 otherwise); None = any
    body_timeout: float = 30.0   # seconds for a request body to arrive once its head is in (408 otherwise)


def new_engine(model, settings: Settings) -> Engine:
    engine = Engine(model, max_batch=settings.max_batch, max_len=min(settings.context, model.args.max_seq_len),
                    compile=settings.compile, isolate=True)  # one sequence's failure fails its request only
    if settings.compile:
        log.info("compiling the decode step (the first time takes a while; torch caches it on disk)")
        engine.warm_up()
    return engine


class Service:
    """What the routes share: the tokenizer, the scheduler and the settings."""

    def __init__(self, model, tokenizer, settings: Settings, *, metrics: Metrics | None = None,
                 preset: dict | None = None, vision: ImageInput | None = None):
        self.model, self.tokenizer, self.settings, self.vision = model, tokenizer, settings, vision
        self.metrics = metrics or Metrics()
        self.preset = preset or {}  # a library model's Modelfile values: defaults under the request's own
        engine = new_engine(model, settings)
        if settings.mirrored:
            engine = Leader(engine)
        self.context = engine.max_len
        self.scheduler = Scheduler(engine, tokenizer, max_queue=settings.max_queue, metrics=self.metrics)

    # ------------------------------------------------------------------------- request → job (sync)
    def chat_job(self, req: ChatRequest) -> Job:
        """A chat, with or without images: tools into the prompt and response_format / a required tool call as
        the grammar its answer follows, the same for both."""
        self._check_common(req)
        req = self.with_preset(req)
        try:
            offered, forced = tools.checked(req.tools, req.tool_choice)
        except LlamalabError as e:
            raise APIError(400, str(e), param="tools") from None
        top = (req.top_logprobs or 0) if req.logprobs else None
        if req.images():
            prompt, rows = self._image_prompt(req, offered)
        else:
            prompt, rows = self.tokenizer.encode(self._chat_text(req, offered), bos=False), None  # BOS: the template's
        grammar = response_grammar(self.tokenizer, req.response_format, offered, forced)
        job = self._job(req, [prompt], req.max_completion_tokens or req.max_tokens, top, grammar)
        if rows is not None:
            job.embeddings = [rows(prompt)]
        job.tools = offered or None
        return job

    def _chat_text(self, req: ChatRequest, offered: list[dict], mark: str | None = None) -> str:
        """The conversation rendered with the chat template, the offered tools in it (the template's own way, or
        as a system message), each image as `mark`."""
        try:
            template = resolve_template(self.settings.template, self.tokenizer)
            native = tools.uses_tools(template)
            messages = tools.conversation(conversation(self.preset, req.conversation(mark)), offered, native)
            return render(messages, template, True, bos_token=self.tokenizer.bos_token or "",
                          eos_token=self.tokenizer.eos_token or "", **({"tools": offered} if native and offered else {}))
        except LlamalabError as e:
            raise APIError(400, str(e), param="messages") from None

    def _image_prompt(self, req: ChatRequest, offered: list[dict]):
        """A chat with images: read and checked (size, pixels), the conversation rendered with a mark no text
        can contain where each image goes, the marks made image tokens; returns (prompt, rows), `rows(prompt)`
        the prompt's input rows with the images' features (the vision tower runs here, off the decode thread),
        called once the job is known to fit."""
        found = [(f"messages[{i}] image {j + 1}", url) for i, m in enumerate(req.messages)
                 for j, url in enumerate(m.images())]
        if self.vision is None:
            raise APIError(400, f"the model `{self.settings.name}` has no vision tower: it takes no images; "
                                "serve a vision model (a LLaVA checkpoint) for images", param="messages")
        needed = len(found) * self.vision.image_tokens
        if needed >= self.context:
            raise APIError(400, f"{len(found)} image(s) take {needed} tokens; this model's context is "
                                f"{self.context} tokens; send fewer images", param="messages",
                           code="context_length_exceeded")
        mark = f"<image-{secrets.token_hex(8)}>"
        try:
            images = [open_image(data_url_bytes(url, where), name=where) for where, url in found]
        except LlamalabError as e:
            raise APIError(400, str(e), param="messages") from None
        text = self._chat_text(req, offered, mark)
        if text.count(mark) != len(images):
            raise APIError(400, "the chat template left out a message that holds an image", param="messages")
        return self.vision.ids(self.tokenizer, text, mark=mark), \
            lambda prompt: self.vision.rows(prompt, self.vision.features(images))

    def completion_job(self, req: CompletionRequest) -> Job:
        self._check_common(req)
        req = self.with_preset(req)
        prompts = []
        for p in req.prompts():
            if isinstance(p, str):
                p = self.tokenizer.encode(p, bos=self.tokenizer.add_bos)
            elif any(not 0 <= t < self.tokenizer.vocab_size for t in p):
                raise APIError(400, f"prompt token ids must be in [0, {self.tokenizer.vocab_size})", param="prompt")
            if not p:
                raise APIError(400, "the prompt is empty (and the tokenizer adds no BOS token)", param="prompt")
            prompts.append(p)
        grammar = response_grammar(self.tokenizer, req.response_format, [], None)
        return self._job(req, prompts, req.max_tokens, req.logprobs, grammar)

    def with_preset(self, req: Sampling) -> Sampling:
        """The request with the Modelfile's parameters where it sets none of its own."""
        params = self.preset.get("parameters") or {}
        names = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed",
                 "repeat_penalty": "repetition_penalty", "num_predict": "max_tokens", "stop": "stop"}
        unset = {names[k]: v for k, v in params.items() if k in names and names[k] not in req.model_fields_set}
        if unset.get("max_tokens", 1) < 1:
            unset.pop("max_tokens")
        return req.model_copy(update=unset) if unset else req

    def answers_to(self, name: str) -> bool:
        if name == self.settings.name:
            return True
        try:
            return library.full_name(name) == library.full_name(self.settings.name)
        except LlamalabError:
            return False

    def _check_common(self, req: Sampling) -> None:
        if req.model is not None and not self.answers_to(req.model):
            raise APIError(404, f"the model `{req.model}` does not exist; this server serves "
                                f"`{self.settings.name}`", param="model", code="model_not_found")
        message = req.unsupported()
        if message:
            raise APIError(400, message)

    def _job(self, req: Sampling, prompts: list[list[int]], max_tokens: int | None, top: int | None,
             grammar=None) -> Job:
        longest = max(map(len, prompts))
        room = self.context - longest + 1  # the last new token is never fed back into the cache
        if room < 1 or (max_tokens or 1) > room:
            asked = f" + max_tokens {max_tokens}" if max_tokens else ""
            raise APIError(400, f"this model's context is {self.context} tokens; the prompt has {longest} "
                                f"token{'s' * (longest != 1)}{asked}; shorten the prompt or lower max_tokens",
                           param="messages" if isinstance(req, ChatRequest) else "prompt",
                           code="context_length_exceeded")
        n = len(prompts) * req.n
        if n > self.scheduler.capacity:
            raise APIError(400, f"{n} sequences requested (prompts x n); this server holds at most "
                                f"{self.scheduler.capacity}", param="n")
        sampler = Sampler(req.temperature, req.top_k if req.top_k and req.top_k > 0 else None,
                          req.top_p if req.top_p < 1 else None, req.min_p or None, req.repetition_penalty)
        params = Params(max_tokens or room, sampler, req.seed, req.stop_strings(),
                        frozenset() if req.ignore_eos else frozenset(self.tokenizer.stop_ids), top, grammar)
        return Job(prompts, params, n=req.n)


def library_service(name: str, settings: Settings, metrics: Metrics, load_options: dict) -> Service:
    """The library model `name` loaded as a `Service` (its Modelfile's template, parameters and num_ctx)."""
    rt = load_runnable(name, **load_options)
    num_ctx = (rt.preset.get("parameters") or {}).get("num_ctx")
    own = replace(settings, name=name, template=settings.template or rt.template,
                  context=min(settings.context, num_ctx or settings.context, rt.args.max_seq_len))
    return Service(rt.model, rt.tokenizer, own, metrics=metrics, preset=rt.preset, vision=image_input(rt))


def estimate_bytes(name: str, settings: Settings) -> int:
    """What loading `name` will hold, before loading it: its files and a float32 KV cache."""
    entry = library.manifest(name)
    c = entry.get("config") or {}
    cache = 2 * c.get("n_layers", 0) * settings.max_batch * (min(settings.context, c.get("max_seq_len", 0)) + 1) * \
        c.get("n_kv_heads", 0) * (c.get("dim", 0) // max(c.get("n_heads", 1), 1)) * 4
    return entry.get("size", 0) + cache


def create_app(model, tokenizer, settings: Settings, *, vision: ImageInput | None = None, budget: Budget = Budget(),
               load_options: dict | None = None) -> FastAPI:
    """The app for one model (`model`, `tokenizer`), or with model None for every model of the library by name,
    loaded on demand with `load_options` (`runtime.load_runnable`'s device, dtype, threads) within `budget`.
    vision: a LLaVA checkpoint's image input (`runtime.vision.image_input`); chats may then hold images."""
    metrics = Metrics()
    if model is not None:
        services = Fixed(Service(model, tokenizer, settings, metrics=metrics, vision=vision))
    else:
        services = Pool(lambda name: library_service(name, settings, metrics, load_options or {}), budget,
                        lambda name: estimate_bytes(name, settings))

    @asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        metrics.tasks.set_function(lambda: len(asyncio.all_tasks(loop)))  # read in the loop (/metrics)
        services.start(loop)
        yield
        await services.stop()
        if settings.mirrored:
            services.service.scheduler.engine.close()  # the other ranks return

    app = FastAPI(title="llamalab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services, app.state.settings, app.state.metrics = services, settings, metrics
    app.state.service = getattr(services, "service", None)
    app.add_middleware(Guard, metrics=metrics, allowed_hosts=settings.allowed_hosts,
                       body_timeout=settings.body_timeout,
                       max_body=MAX_BODY + (IMAGE_BODY if vision or model is None else 0))
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    _routes(app, services, metrics)
    return app


def _routes(app: FastAPI, services, metrics: Metrics) -> None:
    authorized = [Depends(_authorize)]

    @app.get("/health")
    async def health():
        loads = [e.service.scheduler.load() for e in services.loaded()]
        return {"status": "ok", "running": sum(x["running"] for x in loads),
                "waiting": sum(x["waiting"] for x in loads), "loaded": [e.name for e in services.loaded()]}

    @app.get("/metrics")
    async def metrics_page():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=authorized)
    async def models():
        return {"object": "list", "data": _model_cards(services)}

    @app.get("/v1/models/{model_id:path}", dependencies=authorized)
    async def model(model_id: str):
        for card in _model_cards(services):
            if card["id"] == model_id or (services.library and model_id in library.names()
                                          and library.full_name(model_id) == card["id"]):
                return card
        raise APIError(404, f"the model `{model_id}` does not exist", param="model", code="model_not_found")

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat_completions(request: Request):
        body = await _parse(request, ChatRequest)
        async with services.use(body.model) as service:
            job = await run_in_threadpool(service.chat_job, body)  # template + tokenizer off the event loop
            return await _answer(service, request, body, job, Formatter(
                chat=True, model=service.settings.name, tokenizer=service.tokenizer, logprobs=body.logprobs,
                tools=job.tools))

    @app.post("/v1/completions", dependencies=authorized)
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        async with services.use(body.model) as service:
            job = await run_in_threadpool(service.completion_job, body)
            return await _answer(service, request, body, job, Formatter(
                chat=False, model=service.settings.name, tokenizer=service.tokenizer,
                logprobs=body.logprobs is not None))

    ollama.add_routes(app, services, authorized)
    embeddings.add_routes(app, services, authorized)
    ollama_create.add_routes(app, services, authorized)

    if app.state.settings.ui:
        @app.get("/", response_class=HTMLResponse)
        async def chat_page():
            return HTMLResponse(page.html(), headers=page.headers())


async def _parse(request: Request, shape: type[Sampling]) -> Sampling:
    """The body through pydantic's own JSON parser (strict: no NaN/Infinity, valid Unicode, bounded depth)."""
    try:
        return shape.model_validate_json(await request.body())
    except ValidationError as e:
        message, param = validation_message(list(e.errors()))
        raise APIError(400, message, param=param) from None


def _model_cards(services) -> list[dict]:
    if not services.library:
        service = services.service
        return [{"id": service.settings.name, "object": "model", "created": 0, "owned_by": "llamalab",
                 "max_model_len": service.context}]
    return [{"id": e["name"], "object": "model", "created": int(e.get("modified", 0)), "owned_by": "llamalab"}
            for e in library.entries()]


async def _authorize(request: Request) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if not header:
        raise APIError(401, "no API key given: send the header `Authorization: Bearer KEY`", code="invalid_api_key")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise APIError(401, "incorrect API key", code="invalid_api_key")


# ------------------------------------------------------------------------------------------ answering
async def _answer(service: Service, request: Request, body: Sampling, job: Job, fmt: Formatter):
    try:
        service.scheduler.submit(job)
    except QueueFull as e:
        raise APIError(429, str(e), code="queue_full") from None
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return EventSourceResponse(_stream(service, job, fmt, usage), ping=15, sep="\n")
    return await _whole(service, request, job, fmt)


async def _stream(service: Service, job: Job, fmt: Formatter, usage: bool):
    """SSE events: chunks as the tokens come, then `[DONE]`. A client that goes away cancels the job
    (sse-starlette cancels this generator), which frees its slots before the next decode step."""
    try:
        opening = fmt.role_chunk(job.choices)
        if opening:
            yield _json(opening)
        async for update in job.updates():
            if update.error:  # this request ends here (its other choices are released); the others go on
                yield _json(APIError(500, f"generation failed: {update.error}").body())
                return
            chunk = fmt.chunk(update)
            if chunk is not None:
                yield _json(chunk)
        if usage:
            yield _json(fmt.usage_chunk(job))
        yield "[DONE]"
    finally:
        service.scheduler.cancel(job)


async def _whole(service: Service, request: Request, job: Job, fmt: Formatter):
    choices = [Choice() for _ in range(job.choices)]

    async def collect():
        async for update in job.updates():
            if update.error:
                raise APIError(500, f"generation failed: {update.error}")
            choices[update.index].add(update)

    task = asyncio.ensure_future(collect())
    try:
        while not task.done():  # wake up now and then to notice a client that went away
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
        task.result()
    finally:
        task.cancel()
        service.scheduler.cancel(job)
    return fmt.answer(job, choices)


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ errors
def _body(request: Request, e: APIError) -> dict:
    """OpenAI's error body; ollama's `{"error": message}` under /api."""
    return {"error": e.message} if request.url.path.startswith("/api/") else e.body()


async def _api_error(request: Request, e: APIError):
    return JSONResponse(_body(request, e), status_code=e.status)


async def _validation_error(request: Request, e: RequestValidationError):
    message, param = validation_message(list(e.errors()))
    return JSONResponse(_body(request, APIError(400, message, param=param)), status_code=400)


async def _http_error(request: Request, e: HTTPException):
    message = {404: f"no route {request.method} {request.url.path}", 405: f"{request.method} is not allowed "
               f"on {request.url.path}"}.get(e.status_code, str(e.detail))
    close = {"connection": "close"} if e.status_code in (408, 413) else None  # the body was not read to its end
    return JSONResponse(_body(request, APIError(e.status_code, message)), status_code=e.status_code, headers=close)


async def _internal_error(request: Request, e: Exception):
    log.exception("internal error on %s", request.url.path)
    return JSONResponse(APIError(500, "internal server error (see the server's log)").body(), status_code=500)
