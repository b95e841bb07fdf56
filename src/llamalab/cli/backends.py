"""Options of the commands that talk to a teacher or a judge model (not a subcommand itself): an
OpenAI-compatible endpoint or a local checkpoint."""

from .types import nonnegative_int, positive_float, positive_int


def add_backend_arguments(p, role: str):
    p.add_argument(f"--{role}", required=True, metavar="URL|PATH",
                   help=f"the {role}: an OpenAI-compatible API base URL (e.g. http://127.0.0.1:8000/v1; `llamalab "
                        f"serve` counts) or a local checkpoint (.gguf, HF or Meta directory, hub id) run in-process")
    p.add_argument("--model-name", metavar="NAME", help="the endpoint's model id (default: the first it lists)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the endpoint's API key (default OPENAI_API_KEY)")
    p.add_argument("--concurrency", type=positive_int, default=8, metavar="C",
                   help="requests in flight at once (a local checkpoint: sequences decoding together); default 8")
    p.add_argument("--retries", type=nonnegative_int, default=4, metavar="N",
                   help="retries of a refused connection, timeout, 429 or 5xx, with exponential backoff (default 4)")
    p.add_argument("--timeout", type=positive_float, default=600.0, metavar="S", help="seconds per request (default 600)")
    p.add_argument("--context", type=positive_int, default=2048, metavar="N",
                   help="a local checkpoint's tokens per sequence, prompt + answer (default 2048)")
    p.add_argument("--device", help="a local checkpoint's device (default: cuda if available)")


def open_backend(args, spec: str):
    import os

    from ..errors import LlamalabError
    from ..instruct.backends import open_model

    if args.retries < 0:
        raise LlamalabError(f"--retries must be >= 0, got {args.retries}")
    return open_model(spec, api_key=os.environ.get(args.api_key_env), model=args.model_name,
                      concurrency=args.concurrency, retries=args.retries, timeout=args.timeout, context=args.context,
                      device=args.device)
