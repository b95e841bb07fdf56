"""ollama's POST /api/create: a library model from a Modelfile body (`modelfile`, the older API) or from the
newer fields (`from`, `system`, `template`, `parameters`, `messages`, `license`), as `llamalab create` makes it.
Status lines stream as NDJSON ({"status": "reading model metadata"} ... {"status": "success"}); `"stream":
false` answers the last one. Paths in a Modelfile are the server's (relative ones to its working directory);
`files`/`adapters` by digest would need blob uploads (/api/blobs), which this server does not take."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field, StrictStr
from starlette.concurrency import run_in_threadpool

from .. import library
from ..errors import LlamalabError
from ..models import create
from ..models.modelfile import from_fields, parse
from .ollama import _Body, _parse
from .protocol import APIError


class CreateBody(_Body):
    model: StrictStr | None = None
    name: StrictStr | None = None        # the older field name
    modelfile: StrictStr | None = None   # the older API: the Modelfile's text
    base: StrictStr | None = Field(None, alias="from")
    system: StrictStr | None = None
    template: StrictStr | None = None
    parameters: dict | None = None
    messages: list | None = None
    license: StrictStr | list[StrictStr] | None = None
    files: dict | None = None
    adapters: dict | None = None
    quantize: StrictStr | None = None
    stream: bool = True

    def modelfile_of(self):
        if self.files or self.adapters:
            raise APIError(400, "files and adapters by digest need blob uploads (/api/blobs), which this server does "
                                "not take; give `from` a library name or a path on the server, or a Modelfile with "
                                "FROM and ADAPTER paths", param="files" if self.files else "adapters")
        if self.quantize:
            raise APIError(400, "quantize: not done by create here; run `llamalab quantize` and import the result",
                           param="quantize")
        if self.modelfile is not None:
            return parse(self.modelfile)
        if not self.base:
            raise APIError(400, "from: a base model (a library name or a path on the server) or a modelfile is "
                                "required", param="from")
        return from_fields(self.base, system=self.system, template=self.template, parameters=self.parameters,
                           messages=self.messages, license=self.license)


def add_routes(app: FastAPI, services, dependencies) -> None:
    @app.post("/api/create", dependencies=dependencies)
    async def create_model(request: Request):
        body = await _parse(request, CreateBody)
        name = body.model or body.name
        if not name:
            raise APIError(400, "model: the new model's name is required", param="model")
        statuses: list[str] = []
        try:
            await run_in_threadpool(lambda: create(name, body.modelfile_of(), base_dir=Path.cwd(),
                                                   progress=statuses.append))
        except LlamalabError as e:
            raise APIError(400, str(e)) from None
        if services.library:  # a model made again under a loaded name: the next request loads the new one
            await services.unload(library.full_name(name), reason="created again")
        if not body.stream:
            return JSONResponse({"status": statuses[-1]})
        lines = "".join(json.dumps({"status": status}) + "\n" for status in statuses)
        return StreamingResponse(iter([lines]), media_type="application/x-ndjson")
