"""Embeddings: ollama's POST /api/embed and OpenAI's POST /v1/embeddings, on `runtime.embed` — the mean of the
model's final normed hidden states over the input's tokens, L2-normalised (unit vectors: a dot product is the
cosine similarity). `input`: a string or a list of them (/v1 also token ids, or lists of them); `truncate`
(ollama, default true): an input longer than the context keeps its first tokens, else a 400. /v1 answers
`encoding_format` "float" or "base64" (little-endian float32, what OpenAI's client asks for by default)."""

from __future__ import annotations

import base64
import struct
import time
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from pydantic import Field, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from ..errors import LlamalabError
from ..runtime import embed
from .ollama import _Body, _now, _parse, keep_alive_seconds, of
from .protocol import APIError

MAX_INPUTS = 2048  # inputs per request (OpenAI's limit)
Texts = StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_INPUTS)]
Ids = Annotated[list[StrictInt], Field(min_length=1)]


class EmbedBody(_Body):  # ollama
    model: StrictStr
    input: Texts
    truncate: bool = True
    keep_alive: StrictStr | int | float | None = None
    dimensions: StrictInt | None = None


class EmbeddingRequest(_Body):  # OpenAI
    model: StrictStr | None = None
    input: Texts | Ids | Annotated[list[Ids], Field(min_length=1, max_length=MAX_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None


async def _vectors(service, inputs: list, truncate: bool, dimensions: int | None):
    if dimensions is not None and dimensions != service.model.args.dim:
        raise APIError(400, f"dimensions: this model's embeddings have {service.model.args.dim} dimensions; "
                            "leave dimensions out", param="dimensions")
    try:
        return await run_in_threadpool(embed, service.model, service.tokenizer, inputs, truncate=truncate,
                                       context=service.context)
    except LlamalabError as e:
        raise APIError(400, str(e), param="input") from None


def add_routes(app: FastAPI, services, dependencies) -> None:
    @app.post("/api/embed", dependencies=dependencies)
    async def ollama_embed(request: Request):
        body = await _parse(request, EmbedBody)
        started = time.perf_counter()
        async with services.use(body.model, keep_alive_seconds(body.keep_alive)) as service:
            of(service).check_model(body.model)
            inputs = [body.input] if isinstance(body.input, str) else body.input
            vectors, tokens = await _vectors(service, inputs, body.truncate, body.dimensions)
            return {"model": of(service).served, "embeddings": vectors, "created_at": _now(),
                    "total_duration": int((time.perf_counter() - started) * 1e9), "load_duration": 0,
                    "prompt_eval_count": tokens}

    @app.post("/v1/embeddings", dependencies=dependencies)
    async def openai_embeddings(request: Request):
        body = await _parse(request, EmbeddingRequest)
        async with services.use(body.model) as service:
            if body.model is not None and not service.answers_to(body.model):
                raise APIError(404, f"the model `{body.model}` does not exist; this server serves "
                                    f"`{service.settings.name}`", param="model", code="model_not_found")
            x = body.input
            inputs = [x] if isinstance(x, str) or (x and isinstance(x[0], int)) else list(x)
            vectors, tokens = await _vectors(service, inputs, True, body.dimensions)
        data = [{"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": service.settings.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encoded(vector: list[float], how: str):
    return vector if how == "float" else base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
