import io
import sys

from ..errors import LlamalabError
from .common import (add_adapter_argument, add_chat_arguments, add_compile_argument, add_mmproj_argument,
                     add_model_arguments, add_sampling_arguments, add_tensor_parallel_argument, load_model,
                     sampling_kwargs)
from .types import positive_int

HELP = "Continue a prompt with a model (greedy or sampled); prints only the continuation, streamed."


def add_arguments(p):
    p.add_argument("--prompt", help="the text to continue (with --chat: the user message)")
    p.add_argument("--input", metavar="FILE", help="instead: answer every question of a JSONL/JSON file (id, question; "
                   "or Alpaca records) as a chat turn, batched; needs --out")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image for a LLaVA checkpoint (repeatable), at the prompt's <image> marks or in front")
    p.add_argument("--out", metavar="FILE.jsonl", help="with --input: the answers (id, model, answer), appended")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="with --input: answers decoding together")
    p.add_argument("--name", help="with --input: the model's name in the answers (default: the checkpoint's)")
    add_model_arguments(p)
    add_adapter_argument(p)
    add_mmproj_argument(p)
    add_sampling_arguments(p, max_new_tokens=128)
    add_chat_arguments(p)
    add_compile_argument(p)
    p.add_argument("--stop", action="append", default=[], metavar="STR", help="stop at this text (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template as a user turn")
    p.add_argument("--no-stream", action="store_true", help="print the text once, at the end")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence/turn tokens")
    p.add_argument("--truncate", choices=["left"], help="drop the oldest prompt tokens if the context is too small")
    p.add_argument("--json-schema", metavar="FILE", help="the answer is JSON valid against this JSON schema")
    p.add_argument("--json", action="store_true", help="the answer is a JSON object (any)")
    add_tensor_parallel_argument(p)


def run(args):
    if (args.prompt is None) == (args.input is None) or bool(args.input) != bool(args.out):
        raise LlamalabError("give --prompt TEXT, or --input FILE with --out FILE.jsonl")
    if args.input and args.tensor_parallel > 1:
        raise LlamalabError("--input does not combine with --tensor-parallel yet; use --prompt")
    if args.input:
        if args.image or args.json_schema or args.json:
            raise LlamalabError("--image, --json and --json-schema go with --prompt, not --input")
        return answer_input(args)
    from ..grammar import read_schema
    from ..images import open_image
    from ..runtime import complete

    images = [open_image(path) for path in args.image]  # a bad image fails before the (slow) load
    schema = read_schema(args.json_schema) if args.json_schema else None
    rt = load_model(args)
    out = sys.stdout if rt.is_main else io.StringIO()  # every rank decodes the same tokens; rank 0 prints
    for piece in complete(rt, args.prompt, chat=args.chat, system=args.system, stop=args.stop,
                          ignore_eos=args.ignore_eos, truncate=args.truncate, streaming=not args.no_stream,
                          images=images, json_schema=schema, json_object=args.json, **sampling_kwargs(args)):
        out.write(piece)
        out.flush()
    if out.isatty():
        out.write("\n")
    out.flush()


def answer_input(args):
    """--input FILE --out FILE.jsonl: the model's answers to every question, batched on the engine."""
    from ..atomic import check_apart
    from ..instruct.answers import answer_questions
    from ..instruct.local import LocalModel
    from ..instruct.records import load_questions

    check_apart(args.out, [args.input, args.model, getattr(args, "adapter", None)])
    questions = load_questions(args.input)  # a bad file fails before the (slow) load
    model = LocalModel(load_model(args), max_batch=args.batch_size)
    sampling = {k: v for k, v in sampling_kwargs(args).items() if k != "max_new_tokens"}
    new = answer_questions(model, questions, args.out, name=args.name or model.name, system=args.system,
                           max_tokens=args.max_new_tokens, **sampling)
    print(f"{args.out}: {new} answers written, {len(questions) - new} were there already", file=sys.stderr)
