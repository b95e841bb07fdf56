"""Where a teacher's or a judge's answers come from: any OpenAI-compatible endpoint, or a local checkpoint
decoded in this process on the engine.

    model = open_model("http://127.0.0.1:8000/v1")       # a base URL as OpenAI's client takes it
    model = open_model("SmolLM2-135M-Instruct.Q4_1.gguf") # or anything `llamalab.load` reads
    replies = model.chat([Request(messages, max_tokens=256, temperature=0.7, seed=1), ...])

Both take a batch of chat requests and return one `Reply` per request, in order. The endpoint sends up to
`concurrency` requests at once through OpenAI's client, which retries refused connections, timeouts, 429 and
5xx answers with exponential backoff; what still fails after the retries is one `LlamalabError` that names the
URL and what to check. The local model decodes up to `max_batch` requests together on `generate.Engine`,
a new one joining as soon as another finishes (`runtime.run_batch`).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import LlamalabError

INVALID_RETRIES = 2  # an answer that is not a chat completion is asked again this many times


@dataclass(frozen=True)
class Request:
    messages: tuple[dict, ...] | list[dict]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # beyond OpenAI's fields (vLLM's names, which `llamalab serve` takes too): sent only when set
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str  # "stop" | "length"


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def open_model(spec: str, *, api_key: str | None = None, model: str | None = None, concurrency: int = 8,
               retries: int = 4, timeout: float = 600.0, adapter: str | None = None, context: int = 2048,
               device: str | None = None, dtype=None, template: str | None = None):
    """An `Endpoint` for an http(s) URL, else a `LocalModel` for a checkpoint path or hub id."""
    if concurrency < 1:
        raise LlamalabError(f"concurrency must be >= 1, got {concurrency}")
    if is_url(spec):
        return Endpoint(spec, api_key=api_key, model=model, concurrency=concurrency, retries=retries,
                        timeout=timeout)
    from ..runtime import load_runnable  # torch and the model only for a local model: an endpoint needs neither
    from .local import LocalModel

    return LocalModel(load_runnable(spec, device=device, dtype=dtype, adapter=adapter, template=template),
                      max_batch=concurrency, context=context)


# --------------------------------------------------------------------------------------------- endpoint

class Endpoint:
    """Chat completions from an OpenAI-compatible server at `url` (the base URL, usually ending in /v1)."""

    def __init__(self, url: str, *, api_key: str | None = None, model: str | None = None, concurrency: int = 8,
                 retries: int = 4, timeout: float = 600.0):
        try:
            import openai
        except ImportError as e:
            raise LlamalabError("talking to an endpoint needs OpenAI's client: pip install 'llamalab[instruct]'") from e
        self.url, self.concurrency, self.retries = url.rstrip("/"), concurrency, retries
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key or "unused", max_retries=retries,
                                    timeout=timeout)
        self.model = model or self._first_model()
        self.name = f"{self.model} at {self.url}"

    def _first_model(self) -> str:
        page = self._call("models", lambda: self.client.models.list())
        ids = [m.id for m in getattr(page, "data", None) or [] if isinstance(getattr(m, "id", None), str)]
        if not ids:
            raise LlamalabError(f"{self.url}/models lists no model; name one with --model-name")
        return ids[0]

    def chat(self, requests: list[Request]) -> list[Reply]:
        if len(requests) <= 1 or self.concurrency == 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, r: Request) -> Reply:
        kw = dict(model=self.model, messages=list(r.messages), max_tokens=r.max_tokens, temperature=r.temperature)
        kw.update({k: v for k, v in (("top_p", r.top_p), ("seed", r.seed), ("stop", list(r.stop) or None))
                   if v is not None})
        extra = {k: v for k in ("top_k", "min_p", "repetition_penalty") if (v := getattr(r, k)) is not None}
        if extra:
            kw["extra_body"] = extra
        for attempt in range(INVALID_RETRIES + 1):
            answer = self._call("chat/completions", lambda: self.client.chat.completions.create(**kw))
            try:
                choice = answer.choices[0]
                text, reason = choice.message.content, choice.finish_reason
                if isinstance(text, str):
                    return Reply(text, reason if reason in ("stop", "length") else "stop")
            except (AttributeError, IndexError, TypeError):
                pass
            time.sleep(0.5 * 2 ** attempt)
        raise LlamalabError(f"{self.url}/chat/completions answered {INVALID_RETRIES + 1} times with something that "
                            f"is not a chat completion ({_shown(answer)}); is this an OpenAI-compatible API?")

    def _call(self, route: str, fn):
        """fn() with the client's errors as one line: what failed, where, and what to check."""
        import openai

        where = f"{self.url}/{route}"
        tries = f"after {self.retries + 1} attempts with backoff"
        try:
            return fn()
        except openai.APITimeoutError:
            raise LlamalabError(f"{where} did not answer in time {tries}; raise --timeout or lower --concurrency") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise LlamalabError(f"cannot reach {where} ({type(cause).__name__}: {cause}) {tries}; is the server "
                                f"running, and is the URL its API base (e.g. http://127.0.0.1:8000/v1)?") from None
        except openai.APIStatusError as e:
            raise LlamalabError(f"{where} answered HTTP {e.status_code}: {_message(e)}{_hint(e.status_code, tries)}") from None
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError, RecursionError) as e:
            # RecursionError: a reply nested deeper than the parser goes
            raise LlamalabError(f"{where} answered with invalid JSON ({type(e).__name__}); is this an "
                                f"OpenAI-compatible API?") from None


def _message(e) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body)
    text = err.get("message") if isinstance(err, dict) else None
    return " ".join(str(text or e.message).split())[:300]


def _hint(status: int, tries: str) -> str:
    if status in (401, 403):
        return " — check the API key (--api-key-env names the variable that holds it)"
    if status == 404:
        return " — check the URL (the API base, usually ending in /v1) and the model name"
    if status == 429 or status >= 500:
        return f" ({tries}; the server is overloaded or failing)"
    return " — the endpoint rejected the request"


def _shown(answer) -> str:
    try:
        text = answer if isinstance(answer, str) else repr(answer)
    except RecursionError:  # a reply nested too deep to print
        text = f"a {type(answer).__name__} nested too deeply to show"
    return " ".join(text.split())[:80]
