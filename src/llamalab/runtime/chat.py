"""A conversation with a loaded model: what `llamalab chat` does, as a function. Each turn re-renders the
whole conversation with the chat template; the session's KV cache keeps the part that did not change."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..chat_templates import render_for, resolve_template
from ..errors import LlamalabError
from ..generate import Session, stream_text
from ..tensor_parallel import share
from .load import Runnable
from .vision import ConversationImages


def converse(rt: Runnable, read: Callable[[], str | None], write: Callable[[str], object], *, context: int,
             system: str | None = None, messages: list[dict] = (), stop=(), **sampling) -> None:
    """Chat until `read()` gives None (the end) or /exit: `/reset` starts over, `/image PATH` attaches an image
    to the next message (a LLaVA checkpoint; a bad one is an error line), an empty line is skipped, every
    answer streams to `write` as it is decoded; `messages` open the conversation (after `system`), `stop`
    strings end an answer. Under tensor parallelism rank 0 reads and every rank decodes
    the same tokens (only rank 0's `write` should show them). A turn that fails (it no longer fits the
    context) is one error line on rank 0's stderr, and the conversation goes on; Ctrl-C stops an answer."""
    tok = rt.tokenizer
    template = rt.template or resolve_template(None, tok)  # no template at all: fail now, not at the first message
    session = Session(rt.model, max_len=context, compile=rt.compile)
    sampling["seed"] = rt.agree_seed(sampling.get("seed"), sampling.get("temperature"))
    start = ([{"role": "system", "content": system}] if system else []) + list(messages)
    messages, images = list(start), ConversationImages(rt)
    while True:
        line = share(read() if rt.is_main else None, session.engine.device)  # rank 0's line on every rank
        if line is None or line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages = list(start)
            session.reset()
            images.reset()
            continue
        if line.strip() == "/image" or line.strip().startswith("/image "):
            try:
                images.attach(line.strip().removeprefix("/image"))
            except LlamalabError as e:
                if rt.is_main:
                    print(f"llamalab chat: error: {e}", file=sys.stderr)
            continue
        if not line.strip():
            continue
        turn = messages + [{"role": "user", "content": images.content(line)}]
        answer = []
        try:
            ids, rows = images.prompt(tok, render_for(tok, turn, template))
            tokens = session.stream(ids, **sampling, stop_ids=tok.stop_ids, embeddings=rows)
            for piece in stream_text(tokens, tok, stop_ids=tok.stop_ids, stop=stop):
                answer.append(piece)
                write(piece)
        except LlamalabError as e:
            if rt.is_main:  # every rank hits the same error (before any collective)
                print(f"llamalab chat: error: {e}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # stop this answer, keep the conversation
            pass
        write("\n")
        messages = turn + [{"role": "assistant", "content": "".join(answer)}]
        images.commit()
