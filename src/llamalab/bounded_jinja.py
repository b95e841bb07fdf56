"""Jinja rendering bounded in time and in size, for templates nobody vetted (a checkpoint's own chat template).

jinja2's immutable sandbox already stops a template from reaching Python's internals or mutating its inputs,
but not from spending: `range(10**5)` nested three deep, `"x" * 10**10` or a string doubled through a
namespace forty times each cost minutes or gigabytes. Here, on top of the sandbox:

- time: every loop iteration (each `for` is compiled through a counting filter), call, filter, operator and
  write checks a deadline (`MAX_SECONDS` per render);
- size: everything written (the output, and the buffers macros, `set` blocks and `caller` fill) counts
  against `MAX_CHARS`; strings and lists an operation returns are bounded by it too;
- single operations that can blow up before anything is written are estimated first: `*` by a number,
  `**`, `%`/`format` widths, `replace`, `indent`, `wordwrap`, `join`, `center`-like widths, `expandtabs`,
  `translate`; numbers passed to a filter or method are at most `MAX_INT`.

    source = "{% for m in messages %}{{ m.content }}{% endfor %}"
    render_bounded(BoundedEnvironment().from_string(source), messages=[...])   # RenderLimit when over a bound
"""

from __future__ import annotations

import contextvars
import functools
import re
import time

from jinja2 import Environment, nodes
from jinja2.compiler import CodeGenerator
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_CHARS = 1 << 22      # characters one render may write (4 Mi: four times the largest request body)
MAX_SECONDS = 3.0        # per render
MAX_INT = 1 << 20        # a width or count given to a filter, method or operator
MAX_BITS = 1 << 16       # an integer `**` may produce
LOOP_FILTER = "_llamalab_counted_loop"

_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("render_budget", default=None)


class RenderLimit(Exception):
    """A template went over a bound (time, size, or a number too large)."""


class _Budget:
    def __init__(self, chars: int, seconds: float):
        self.chars, self.seconds, self.written = chars, seconds, 0
        self.deadline = time.monotonic() + seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimit(f"rendering took longer than {self.seconds:g} s")

    def write(self, n: int) -> None:
        self.written += n
        if self.written > self.chars:
            raise RenderLimit(f"the rendered text is longer than {self.chars} characters")
        self.tick()


def _tick() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.tick()


def _written(item) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.write(len(item) if isinstance(item, str) else 0)


def _size(n: int, what: str) -> None:
    if n > MAX_CHARS:
        raise RenderLimit(f"{what} would make {n} characters or items (at most {MAX_CHARS})")


def _number(x) -> None:
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_INT:
        raise RenderLimit(f"the number {x if abs(x) < 10**30 else 'given'} is too large (at most {MAX_INT})")


def _format_widths(fmt: str) -> None:
    """Widths and precisions written into a format string (`%1000000000s`, `{:>1000000000}`)."""
    for digits in re.findall(r"\d{7,}", fmt):
        _number(int(digits))


def _length(x) -> int:
    return len(x) if isinstance(x, (str, list, tuple)) else 0


def _estimate(name: str, value, args: tuple, kwargs: dict) -> None:
    """Refuse, before running it, a string operation whose result would be over the size bound."""
    text = value if isinstance(value, str) else ""
    if name == "wordwrap":
        width = kwargs.get("width", args[0] if args else 79)
        wrap = kwargs.get("wrapstring", args[2] if len(args) > 2 else None)
        if isinstance(width, int):
            _size(len(text) + (len(text) // max(width, 1) + 1) * _length(wrap), "wordwrap")
        return
    if name == "tojson":
        indent = kwargs.get("indent", args[1] if len(args) > 1 else None)
        if isinstance(indent, int) and indent > 64:
            raise RenderLimit(f"tojson's indent {indent} is too large (at most 64)")
        return
    args = (*args, *kwargs.values())
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        count = len(text) + 1 if not old else text.count(old)
        _size(len(text) + count * max(len(new) - len(old), 0), "replace")
    elif name == "indent" and args:
        width = len(args[0]) if isinstance(args[0], str) else args[0] if isinstance(args[0], int) else 0
        _size(len(text) + (text.count("\n") + 1) * width, "indent")
    elif name == "expandtabs":
        width = args[0] if args and isinstance(args[0], int) else 8
        _size(len(text) + text.count("\t") * width, "expandtabs")
    elif name == "translate" and args and isinstance(args[0], dict):
        _size(len(text) * max([_length(v) for v in args[0].values()] + [1]), "translate")
    elif name in ("format", "format_map") and text:
        _format_widths(text)


def _check_result(result):
    if isinstance(result, (str, list, tuple)):
        _size(len(result), "an operation")
    return result


def _bounded_filter(name: str, func):
    @functools.wraps(func)  # keeps jinja's pass_context / pass_eval_context marks
    def bounded(*args, **kwargs):
        _tick()
        for a in (*args, *kwargs.values()):
            _number(a)
        first = next((i for i, a in enumerate(args) if not isinstance(a, (Context, EvalContext, Environment))),
                     len(args))  # the filtered value comes after what jinja passes itself
        if first < len(args):
            value, rest = args[first], args[first + 1:]
            if name == "join" and not isinstance(value, str):
                items = list(value)  # a generator is read once, here
                sep = kwargs.get("d", rest[0] if rest else "")
                _size(sum(len(str(i)) for i in items) + len(items) * _length(sep), "join")
                args = (*args[:first], items, *rest)
            _estimate(name, value, rest, kwargs)
        return _check_result(func(*args, **kwargs))
    return bounded


def _counted_loop(iterable):
    """What every `for` iterates over: the iterable, with a deadline check per item."""
    budget = _budget.get()
    for item in iterable:
        if budget is not None:
            budget.tick()
        yield item


class _BoundedNamespace(Namespace):
    """`namespace()`: the one mutable object a template has; what it holds is bounded."""

    def __setitem__(self, name, value):
        _check_result(value)
        super().__setitem__(name, value)


class _Buffer(list):
    """The buffer a macro, `set` block or call block writes into: every write counts."""

    def append(self, item):
        _written(item)
        super().append(item)

    def extend(self, items):
        items = tuple(items)
        for item in items:
            _written(item)
        super().extend(items)


class _CodeGenerator(CodeGenerator):
    def buffer(self, frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.new_buffer()")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _CodeGenerator

    def __init__(self, **options):
        super().__init__(**options)
        self.globals["namespace"] = _BoundedNamespace
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters[LOOP_FILTER] = _counted_loop

    def add_filter(self, name: str, func) -> None:
        self.filters[name] = _bounded_filter(name, func)

    def wrap_str_format(self, value):
        """`"{:>9}".format(...)`: the sandbox's own formatter, after a look at the widths."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None

        def bounded(*args, **kwargs):
            _format_widths(value.__self__)
            return wrapped(*args, **kwargs)
        return bounded

    def new_buffer(self) -> _Buffer:
        return _Buffer()

    def _parse(self, source, name, filename):
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, LOOP_FILTER, [], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context, operator, left, right):
        _tick()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    _size(len(seq) * n, "`*`")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if right * left.bit_length() > MAX_BITS:
                raise RenderLimit(f"`**` would make a number of more than {MAX_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            _format_widths(left)
            for a in right if isinstance(right, tuple) else (right,):
                _number(a)
        return _check_result(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
        _tick()
        for a in (*args, *kwargs.values()):
            _number(a)
            _check_result(a)
        if isinstance(getattr(__obj, "__self__", None), str):  # a str method: s.replace(...), sep.join(...)
            name = getattr(__obj, "__name__", "")
            if name == "join" and args:
                items = list(args[0])
                _size(sum(_length(i) for i in items[:MAX_CHARS]) + len(items) * len(__obj.__self__), "join")
                args = (items, *args[1:])
            _estimate(name, __obj.__self__, args, kwargs)
        return _check_result(super().call(__context, __obj, *args, **kwargs))


def render_bounded(template, *, max_chars: int | None = None, max_seconds: float | None = None, **variables) -> str:
    """`template.render(**variables)` within the bounds (default MAX_CHARS, MAX_SECONDS; RenderLimit when over)."""
    budget = _Budget(max_chars or MAX_CHARS, max_seconds or MAX_SECONDS)
    token = _budget.set(budget)
    try:
        out = []
        for chunk in template.generate(**variables):
            budget.write(len(chunk))
            out.append(chunk)
        return "".join(out)
    finally:
        _budget.reset(token)
