"""Rendering a chat template that came with a model file, bounded in time and size.

A GGUF's `tokenizer.chat_template` is Jinja written by whoever made the file. Jinja's sandbox stops it
from reaching Python internals, but not from spending: nested loops run for hours, `'x' * 10**9` or a
list that doubles in a loop takes gigabytes, and its failures surface as tracebacks. Here it renders
in a sandbox that also bounds the work:

- every value the template builds (operators, `~`, calls, filters, namespace stores, `{{ }}` output)
  is checked against `MAX_SIZE`, before building where the size can be foreseen (`*`, `%`, widths,
  `replace`, `join`), and by its tree size, since `[x, x]` repeated doubles what `str()` must write;
- the whole output is at most `MAX_SIZE` characters;
- loops, calls and filters check a deadline of `MAX_SECONDS`;
- any failure (syntax, undefined names, sandbox refusals, recursion, overflow, a limit, the
  template's own `raise_exception`) is one sentence naming the template's source.

The globals and filters are those of llama-cpp-python's `Jinja2ChatFormatter` (which follows
transformers), so real templates render to the same text.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime
from functools import lru_cache, wraps
from typing import ClassVar

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.utils import Namespace, pass_context

from paav_cli.errors import UserError

MAX_SIZE = 1_000_000  # characters of any string, items of any container, and of the output
MAX_SECONDS = 3.0  # real templates render in about a millisecond
MAX_INT_BITS = 4096
MAX_TEMPLATE = 256_000  # characters; the longest real chat templates are ~30 KB


class TemplateLimit(Exception):
    """The template exceeded a bound; the message completes "the chat template ...: <message>"."""


class _Raised(Exception):
    """The template's own raise_exception(message): it refuses the messages it was given."""


_state = threading.local()  # the deadline of the render running in this thread, if any


def _tick() -> None:
    deadline = getattr(_state, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateLimit(f"it ran longer than {MAX_SECONDS:g} s")


def _too_big(what: str) -> TemplateLimit:
    return TemplateLimit(f"it builds {what} over the limit of {MAX_SIZE:,} characters or items")


def _size(value, limit: int = MAX_SIZE) -> int:
    """How much `str(value)` must write, counted as a tree: `[x, x]` counts x twice, since doubling a
    shared list is how a template grows exponentially. Sizes of shared parts are memoised, so the count
    costs the distinct objects, not the tree; it stops once past `limit`. Nesting deeper than Python's
    recursion limit is a RecursionError, as str() of it would be."""
    memo: dict[int, int] = {}
    steps = 0

    def walk(item) -> int:
        nonlocal steps
        if isinstance(item, (str, bytes)):
            return len(item)
        if isinstance(item, int) and not isinstance(item, bool):
            if item.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"it builds an integer of more than {MAX_INT_BITS} bits")
            return 1
        if not isinstance(item, (dict, list, tuple, set, frozenset)):
            return 1
        if id(item) in memo:
            return memo[id(item)]
        if len(item) > limit:
            return len(item)
        total = 1
        for child in (*item.keys(), *item.values()) if isinstance(item, dict) else item:
            kind = type(child)  # the common leaves inline: a list of a million scalars is one loop
            if kind is str:
                total += len(child)
            elif kind is int and child.bit_length() <= MAX_INT_BITS or kind is float or kind is bool or child is None:
                total += 1
            else:
                total += walk(child)
            steps += 1
            if steps & 0xFFF == 0:
                _tick()
            if total > limit:
                break
        memo[id(item)] = total
        return total

    return walk(value)


def _checked(value):
    if _size(value) > MAX_SIZE:
        raise _too_big("a value")
    return value


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_DIGITS = re.compile(r"\{[^{}]*\}")


def _percent_widths(fmt: str) -> int:
    total = 0
    for width, precision in _PERCENT_SPEC.findall(fmt):
        if "*" in (width, precision):
            raise TemplateLimit("it formats with a '*' width")
        total += int(width or 0) + int(precision or 0)
    return total


def _format_widths(fmt: str) -> int:
    return sum(int(d) for field in _BRACE_DIGITS.findall(fmt) for d in re.findall(r"\d+", field))


def _check_int_args(args, kwargs) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
            raise TemplateLimit(f"it passes {value} where a size is expected")


def _precheck_str_method(text: str, name: str, args, kwargs) -> None:
    """Refuse str methods whose result would be too big, before they build it."""
    if name in ("center", "ljust", "rjust", "zfill", "expandtabs"):
        _check_int_args(args, kwargs)
        if name == "expandtabs" and text.count("\t") * int((args or [8])[0]) > MAX_SIZE:
            raise _too_big("a string")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = len(text) + 1 if not args[0] else text.count(args[0])
        if len(text) + count * len(args[1]) > MAX_SIZE:
            raise _too_big("a string")
    elif name in ("format", "format_map"):
        _check_int_args(args, kwargs)
        if _format_widths(text) > MAX_SIZE:
            raise _too_big("a string")


class _BoundedNamespace(Namespace):
    """`namespace()`: values stored across loop iterations are where doubling happens."""

    def __setitem__(self, name, value):
        _tick()
        Namespace.__setitem__(self, name, _checked(value))


class _BoundedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node, frame):
        # `a ~ b` compiles to a plain join; route its result through the size check.
        self.write("environment.checked_value(")
        super().visit_Concat(node, frame)
        self.write(")")


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """transformers' `{% generation %}` tag (training masks): renders its body, as llama-cpp-python does."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    if isinstance(indent, int) and indent > 64:
        raise TemplateLimit("it indents JSON by more than 64")
    _checked(x)
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _bounded_filter(name: str, func):
    @wraps(func)
    def wrapper(*args, **kwargs):
        _tick()
        # Filters taking the context or environment get it first; the template's value comes next.
        values = [a for a in args if not isinstance(a, (jinja2.runtime.Context, jinja2.Environment,
                                                         jinja2.nodes.EvalContext))]
        value, rest = (values[0], values[1:]) if values else (None, [])
        _check_int_args(rest, kwargs)
        if name == "indent" and isinstance(value, str):
            width = rest[0] if rest else kwargs.get("width", 4)
            per_line = len(width) if isinstance(width, str) else int(width)
            if len(value) + (value.count("\n") + 1) * per_line > MAX_SIZE:
                raise _too_big("a string")
        elif name == "replace" and isinstance(value, str):
            _precheck_str_method(value, "replace", rest, kwargs)
        elif name == "format" and isinstance(value, str):
            if _percent_widths(value) > MAX_SIZE:
                raise _too_big("a string")
        elif name in ("join", "sum") and value is not None and not isinstance(value, str):
            value = list(value) if not isinstance(value, (list, tuple)) else value
            sep = rest[0] if rest and isinstance(rest[0], str) else kwargs.get("d", "")
            sep = sep if isinstance(sep, str) else ""
            if _size(value) + len(sep) * len(value) > MAX_SIZE:
                raise _too_big("a string or list")
            args = tuple(value if a is values[0] else a for a in args)
        return _checked(func(*args, **kwargs))

    return wrapper


@pass_context
def _loop_guard(context, iterable):
    """Wrapped around every `{% for %}`'s iterable: each iteration checks the deadline."""
    for item in iterable:
        _tick()
        yield item


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self):
        super().__init__(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True, finalize=_checked,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        self.globals["range"] = safe_range
        self.globals["namespace"] = _BoundedNamespace
        self.globals.pop("lipsum", None)  # lipsum(n=10**6) is text on demand and no template needs it
        self.filters["tojson"] = _tojson
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters["_paav_loop"] = _loop_guard

    @staticmethod
    def checked_value(value):
        return _checked(value)

    @staticmethod
    def concat(pieces) -> str:
        """Joins every rendered buffer (the output, macros, `{% set %}` blocks) under the size bound."""
        out, total = [], 0
        for piece in pieces:
            total += len(piece)
            if total > MAX_SIZE:
                raise _too_big("output")
            out.append(piece)
            _tick()
        return "".join(out)

    def _parse(self, source, name, filename):
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_paav_loop", [], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context, operator, left, right):
        _tick()
        ints = isinstance(left, int) and isinstance(right, int)
        sized = (str, bytes, list, tuple)
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(n, int) and isinstance(seq, sized) and n > 0 and _size(seq) * n > MAX_SIZE:
                    raise _too_big("a repeated string or list")
            if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"it builds an integer of more than {MAX_INT_BITS} bits")
        elif operator == "**":
            if ints and right > 0 and abs(left) > 1 and left.bit_length() * right > MAX_INT_BITS:
                raise TemplateLimit(f"it builds an integer of more than {MAX_INT_BITS} bits")
        elif operator == "%":
            if isinstance(left, str) and _percent_widths(left) > MAX_SIZE:
                raise _too_big("a string")
        elif operator == "+" and isinstance(left, sized) and isinstance(right, sized) and (
            _size(left) + _size(right) > MAX_SIZE
        ):
            raise _too_big("a string or list")
        return _checked(super().call_binop(context, operator, left, right))

    def call(self, context, obj, /, *args, **kwargs):
        _tick()
        for value in (*args, *kwargs.values()):
            _checked(value)
        inner = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
        owner = getattr(inner, "__self__", None)
        if isinstance(owner, str):
            _precheck_str_method(owner, getattr(inner, "__name__", ""), args, kwargs)
            if getattr(inner, "__name__", "") == "join" and args:
                items = list(args[0])
                if _size(items) + len(owner) * len(items) > MAX_SIZE:
                    raise _too_big("a string")
                args = (items, *args[1:])
        return _checked(super().call(context, obj, *args, **kwargs))


@lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
    return BoundedEnvironment().from_string(template)


def _raise_exception(message):
    raise _Raised(str(message))


def _strftime_now(fmt):
    return datetime.now().strftime(str(fmt)[:100])


def _reason(e: BaseException) -> str:
    if isinstance(e, jinja2.TemplateSyntaxError):
        text = f"syntax error on line {e.lineno}: {e.message}"
    elif isinstance(e, _Raised):
        text = f"it refused the messages: {e}"
    elif isinstance(e, TemplateLimit):
        text = str(e)
    elif isinstance(e, jinja2.exceptions.SecurityError):
        text = f"the sandbox refused it: {e}"
    elif isinstance(e, jinja2.UndefinedError):
        text = f"it uses something undefined: {e.message}"
    elif isinstance(e, RecursionError):
        text = "it recurses too deeply"
    elif isinstance(e, MemoryError):
        text = "it ran out of memory"
    else:
        text = f"{type(e).__name__}: {e}"
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def render_chat_template(template: str, messages: list[dict], *, source: str, bos_token: str = "",
                         eos_token: str = "", add_generation_prompt: bool = True, **tokens) -> str:
    """The template rendered for `messages`, or a UserError naming `source` (the file it came from).
    `tokens`: further special-token strings the template may use (transformers passes unk_token, ...)."""
    if len(template) > MAX_TEMPLATE:
        raise UserError(
            f"the chat template in {source} is {len(template):,} characters, over the limit of "
            f"{MAX_TEMPLATE:,}; use a model file with a usable template."
        )
    previous = getattr(_state, "deadline", None)
    try:
        compiled = _compiled(template)
        _state.deadline = time.monotonic() + MAX_SECONDS
        return compiled.render(
            **tokens, messages=messages, bos_token=bos_token, eos_token=eos_token, documents=None,
            add_generation_prompt=add_generation_prompt, raise_exception=_raise_exception,
            strftime_now=_strftime_now, functions=None, function_call=None, tools=None, tool_choice=None,
        )
    except Exception as e:  # noqa: BLE001 - the template is foreign code: any failure is its own
        raise UserError(
            f"the chat template in {source} cannot be used ({_reason(e)}); use a model file with a working template."
        ) from None
    finally:
        _state.deadline = previous


def check_hf_chat_template(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> None:
    """Render a Hugging Face tokenizer's chat template (its chat_template.jinja or tokenizer_config.json)
    for `messages` in the bounded sandbox first. transformers renders it in a sandbox without bounds,
    so a hostile template would hang or exhaust memory there; after this check it renders the same
    messages itself (its output stays the one used, exactly as before)."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: transformers uses "default"
        template = template.get("default")
    if not isinstance(template, str):
        return
    tokens = {"bos_token": "", "eos_token": "", **tokenizer.special_tokens_map}
    source = str(tokenizer.name_or_path or "the tokenizer")
    render_chat_template(template, messages, source=source, add_generation_prompt=add_generation_prompt, **tokens)
