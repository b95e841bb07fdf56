from . import serve_options
from .common import (add_adapter_argument, add_compile_argument, add_mmproj_argument, add_model_arguments,
                     add_tensor_parallel_argument, context_length, load_model)

HELP = ("Serve a model (or, without --model, every library model by name, loaded on demand) over HTTP: OpenAI's "
        "and ollama's APIs, streaming, continuous batching, embeddings, a chat page.")

SERVER_PACKAGES = ("fastapi", "uvicorn", "sse_starlette", "prometheus_client")


def add_arguments(p):
    add_model_arguments(p, required=False)
    add_adapter_argument(p)
    add_mmproj_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = any free one; the address is printed)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="sequences decoding together (default 8)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="sequences waiting for a slot; more requests get 429 (default 64)")
    p.add_argument("--context", type=int, metavar="N",
                   help="tokens per sequence, prompt + answer, at most the model's (default: min(model's, 2048)); "
                   "sets the KV-cache size")
    p.add_argument("--served-model-name", metavar="NAME", help="the model id clients use (default: the file's name)")
    p.add_argument("--template", metavar="NAME",
                   help="chat template: alpaca, llama-2, chatml, a Jinja file; default: the checkpoint's own")
    p.add_argument("--no-ui", action="store_true", help="do not serve the chat page at /")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="on Ctrl-C / SIGTERM, seconds to let requests in flight finish (default 30)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="server log level (debug also logs every request)")
    serve_options.add_arguments(p)
    add_compile_argument(p)
    add_tensor_parallel_argument(p)


def _check(args):
    import importlib.util

    from llamalab.errors import LlamalabError

    missing = [m for m in SERVER_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        raise LlamalabError(f"the server needs {', '.join(missing)}: pip install 'llamalab[serve]'")
    for name in ("max_batch", "max_queue", "context"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "max_queue" else 1):
            raise LlamalabError(f"--{name.replace('_', '-')} must be >= {0 if name == 'max_queue' else 1}, got {value}")
    if not 0 <= args.port <= 65535:
        raise LlamalabError(f"--port must be in 0..65535, got {args.port}")


def run(args):
    import os
    from pathlib import Path

    from ..chat_templates import resolve_template
    from ..runtime.vision import image_input
    from ..serve.app import Settings, new_engine
    from ..serve.connections import allowed_hosts
    from ..serve.server import bind, serve

    _check(args)
    limits, key = serve_options.checked(args)
    if args.template:
        resolve_template(args.template)  # a bad name fails before the port is bound
    pool = serve_options.library_mode(args) if args.model is None else {}
    leader = os.environ.get("RANK", "0") == "0"  # under --tensor-parallel only rank 0 listens
    sock = bind(args.host, args.port) if leader else None  # so does a busy port
    rt = load_model(args) if args.model else None
    settings = Settings(
        name=args.served_model_name or Path((args.model or "library").rstrip("/")).name.removesuffix(".gguf"),
        max_batch=args.max_batch, max_queue=args.max_queue,
        context=context_length(args, rt.args.max_seq_len if rt else 1 << 31, 2048),
        api_key=key, template=rt.template if rt else args.template, ui=not args.no_ui, mirrored=args.tensor_parallel > 1, compile=args.compile,
        allowed_hosts=allowed_hosts(args.host, args.allowed_host), body_timeout=limits.body_timeout)
    if not leader:  # run the engine operations of rank 0's server on this rank's shard
        from ..serve.mirror import follow

        return follow(new_engine(rt.model, settings), rt.tokenizer)
    serve(rt and rt.model, rt and rt.tokenizer, settings, sock, drain_timeout=args.drain_timeout,
          log_level=args.log_level, limits=limits, vision=rt and image_input(rt), **pool)
