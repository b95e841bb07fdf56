"""`llamalab serve`'s options for what connections may cost and who may use the server (see serve/connections.py)."""

DEFAULTS = {"max_connections": 512, "header_timeout": 10.0, "body_timeout": 30.0, "keep_alive": 5}


def add_arguments(p):
    p.add_argument("--api-key", metavar="KEY", help="require `Authorization: Bearer KEY` on /v1 (visible to other "
                   "local users in the process list: prefer --api-key-file or $LLAMALAB_API_KEY)")
    p.add_argument("--api-key-file", metavar="FILE", help="the API key: the file's first line "
                   "(default: $LLAMALAB_API_KEY if set; no key otherwise)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name to answer besides this machine's loopback names (repeatable; `*` = any). "
                   "Bound to a loopback address the server answers only localhost/127.0.0.1/::1 by default "
                   "(DNS rebinding); bound elsewhere, any name unless this narrows it")
    p.add_argument("--max-connections", type=int, default=DEFAULTS["max_connections"], metavar="N",
                   help=f"open connections; a request beyond gets 503 (default {DEFAULTS['max_connections']})")
    p.add_argument("--header-timeout", type=float, default=DEFAULTS["header_timeout"], metavar="S",
                   help=f"seconds a client has to send a request's head; then the connection is closed "
                   f"(default {DEFAULTS['header_timeout']:g})")
    p.add_argument("--body-timeout", type=float, default=DEFAULTS["body_timeout"], metavar="S",
                   help=f"seconds a client has to send a request's body; then 408 (default {DEFAULTS['body_timeout']:g})")
    p.add_argument("--max-loaded", metavar="N|SIZE", help="without --model: models held loaded at once, a count "
                   "(e.g. 2) or a size (e.g. 2GB: weights + KV cache); the least recently used idle one makes room "
                   "(default: no bound)")
    p.add_argument("--keep-alive", type=int, default=DEFAULTS["keep_alive"], metavar="S",
                   help=f"seconds an idle keep-alive connection is held (default {DEFAULTS['keep_alive']})")


def library_mode(args) -> dict:
    """`serve` without --model: the options for `server.serve` (budget, load options); a clear error for
    options that need one model."""
    from ..errors import LlamalabError
    from ..serve.pool import Budget

    for flag in ("adapter", "served_model_name"):
        if getattr(args, flag, None):
            raise LlamalabError(f"--{flag.replace('_', '-')} needs --model (the library's models are served by name)")
    if args.tensor_parallel > 1:
        raise LlamalabError("--tensor-parallel needs --model (library models load on demand in one process)")
    return {"budget": Budget.parse(args.max_loaded),
            "load_options": {"device": args.device, "dtype": args.dtype, "threads": args.threads}}


def checked(args):
    """(Limits, the API key or None) from the options; LlamalabError for a bad one."""
    import os

    from ..errors import LlamalabError
    from ..serve.connections import Limits, api_key

    if not 0 <= args.drain_timeout <= 3600:  # also refuses NaN
        raise LlamalabError(f"--drain-timeout must be in [0, 3600] seconds, got {args.drain_timeout}")
    limits = Limits(args.max_connections, args.header_timeout, args.body_timeout, args.keep_alive)
    limits.check()
    return limits, api_key(args.api_key, args.api_key_file, os.environ)
