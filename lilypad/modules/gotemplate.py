"""A subset of Go's ``text/template``: what Lilypad's ``lilypad_module.json.tmpl`` files use.

Supported: text and actions ``{{ ... }}`` with the ``{{-`` / ``-}}`` trim markers, comments
``{{/* ... */}}``, fields ``.Name`` (and ``.A.B``), ``.`` and ``$``, string (``"..."``, raw
`` `...` ``), number, ``true``/``false``/``nil`` literals, parenthesised pipelines, ``|``
pipelines, ``if`` / ``else if`` / ``else`` / ``end``, and the functions ``and``, ``or``, ``not``,
``eq``, ``ne``, ``js``, ``print``, ``printf`` and Lilypad's ``subst``. Anything else (``range``,
``with``, ``define``, variables, other functions) is a :class:`TemplateError` with its line and
column, as Go refuses an unknown function when it parses.

Semantics follow Go's: a missing key is "no value" (false in ``if``, printed ``<no value>``),
``or``/``and`` return one of their arguments, a string is true when it is not empty.

No library was adopted: the Python packages on PyPI that render Go templates (``go-template``,
``cognihub-pygotemplate``) wrap Go's own through a compiled shared library and need a Go
toolchain to install, and none has Lilypad's ``subst``.

Values that come from a module's inputs are :class:`Tainted`: every function carries the taint
on, and the caller's :class:`Sink` decides how such a value may be written (see
:mod:`lilypad.modules.template`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lilypad.errors import TemplateError

#: What Go prints for a missing key.
NO_VALUE = "<no value>"


class _Missing:
    """A key the data does not hold (Go's invalid ``reflect.Value``)."""

    def __repr__(self) -> str:
        return NO_VALUE


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Tainted:
    """A string computed from one or more inputs.

    Attributes:
        text: What Go's template computes (its output, its truth, what ``eq`` compares).
        meant: The text it stands for where it is written inside a JSON string: ``text`` itself,
            but for ``js`` the text before escaping (the escaping was meant for that string).
        names: The inputs it was computed from.
        token: ``text`` is an input exactly as Lilypad passes it: one whole JSON string.
    """

    text: str
    meant: str
    names: frozenset[str]
    token: bool = False


class Sink(Protocol):
    """Where a template writes: its text and untainted values, and tainted values apart."""

    def text(self, text: str) -> None: ...

    def value(self, value: Tainted, where: str) -> None: ...


class StringSink:
    """Plain Go output: everything as text."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(self, text: str) -> None:
        self.parts.append(text)

    def value(self, value: Tainted, where: str) -> None:
        self.parts.append(value.text)

    def getvalue(self) -> str:
        return "".join(self.parts)


# --- the tree ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    path: tuple[str, ...]  # () is `.` itself
    where: str


@dataclass(frozen=True)
class Literal:
    value: Any
    where: str


@dataclass(frozen=True)
class Identifier:
    name: str
    where: str


@dataclass(frozen=True)
class Command:
    args: tuple[Any, ...]  # Field | Literal | Identifier | Pipeline
    where: str


@dataclass(frozen=True)
class Pipeline:
    commands: tuple[Command, ...]
    where: str


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Action:
    pipeline: Pipeline
    where: str


@dataclass(frozen=True)
class If:
    condition: Pipeline
    then: tuple[Any, ...]
    otherwise: tuple[Any, ...]
    where: str


FUNCTIONS = ("and", "or", "not", "eq", "ne", "js", "print", "printf", "subst")
_UNSUPPORTED = ("range", "with", "define", "template", "block", "break", "continue")

# --- lexing --------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\\n]|\\.)+')
  | (?P<number>[+-]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<variable>\$[A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()|])
    """,
    re.VERBOSE,
)


@dataclass
class _Token:
    kind: str
    text: str
    where: str


class _Source:
    """The template's text and the line:column of any offset in it."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def where(self, offset: int) -> str:
        line = max(i for i, start in enumerate(self._starts) if start <= offset)
        return f"{self.name}:{line + 1}:{offset - self._starts[line] + 1}"

    def error(self, offset: int, message: str) -> TemplateError:
        return TemplateError(f"{self.where(offset)}: {message}")


_WS = " \t\r\n"


def _actions(source: _Source) -> Iterator[tuple[str, int, str | None]]:
    """Split into ("text", offset, text) and ("action", offset, inner text, or None for a
    comment), with the trim markers applied: ``{{- `` and `` -}}`` (a space beside the ``-``)."""
    text = source.text
    pos = 0
    trim_next = False
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        trim_left = start >= 0 and text[start + 2 : start + 3] == "-"
        trim_left = trim_left and text[start + 3 : start + 4] in tuple(_WS)
        if trim_next:
            chunk = chunk.lstrip(_WS)
        if trim_left:
            chunk = chunk.rstrip(_WS)
        if chunk:
            yield "text", pos, chunk
        if start < 0:
            return
        inner = start + (4 if trim_left else 2)
        if text.startswith("/*", inner):
            close = text.find("*/", inner + 2)
            if close < 0:
                raise source.error(start, "unclosed comment")
            end, trim_next = _right_delim(text, close + 2)
            if end < 0:
                raise source.error(start, "comment ends before closing delimiter")
            yield "action", start, None
            pos = end
            continue
        body_end, trim_next = _action_end(source, inner, start)
        yield "action", inner, text[inner:body_end]
        pos = body_end + (4 if trim_next else 2)


def _right_delim(text: str, at: int) -> tuple[int, bool]:
    """Past ``}}`` or `` -}}`` at ``at`` (and whether it trims), or -1."""
    if text.startswith("}}", at):
        return at + 2, False
    if text[at : at + 1] in tuple(_WS) and text.startswith("-}}", at + 1):
        return at + 4, True
    return -1, False


def _action_end(source: _Source, at: int, start: int) -> tuple[int, bool]:
    """Where an action's inner text ends (before ``}}`` or `` -}}``), skipping quoted text."""
    text = source.text
    i = at
    while i < len(text):
        if text[i] in "\"'`":
            close = _quote_end(text, i)
            if close < 0:
                raise source.error(i, "unterminated quoted string")
            i = close + 1
            continue
        if text.startswith("}}", i):
            trimmed = i - 2 >= at and text[i - 1] == "-" and text[i - 2] in _WS
            return (i - 2 if trimmed else i), trimmed
        i += 1
    raise source.error(start, "unclosed action")


def _quote_end(text: str, at: int) -> int:
    quote = text[at]
    i = at + 1
    while i < len(text):
        if text[i] == "\\" and quote != "`":
            i += 2
            continue
        if text[i] == quote:
            return i
        if text[i] == "\n" and quote != "`":
            return -1
        i += 1
    return -1


def _tokens(source: _Source, inner: str, offset: int) -> list[_Token]:
    tokens = []
    pos = 0
    while pos < len(inner):
        m = _TOKEN.match(inner, pos)
        if m is None:
            raise source.error(offset + pos, f"unexpected {inner[pos]!r} in action")
        kind = m.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(kind, m.group(0), source.where(offset + pos)))
        pos = m.end()
    return tokens


# --- parsing -------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, source: _Source) -> None:
        self.source = source
        self.items = self._items()

    def _items(self) -> Iterator[tuple[Any, str, list[_Token]]]:
        """Text nodes, and actions as (None, where, tokens); comments dropped."""
        for kind, offset, body in _actions(self.source):
            if kind == "text":
                yield Text(str(body)), "", []
            elif body is not None:
                where = self.source.where(offset)
                tokens = _tokens(self.source, body, offset)
                if not tokens:
                    raise TemplateError(f"{where}: missing value for command")
                yield None, where, tokens

    def parse(self) -> tuple[Any, ...]:
        nodes, ending, where, _ = self._list()
        if ending is not None:
            raise TemplateError(f"{where}: unexpected {{{{{ending}}}}}")
        return nodes

    def _list(self) -> tuple[tuple[Any, ...], str | None, str, list[_Token]]:
        """Nodes up to an ``else`` or ``end`` (returned with its place and tokens) or the end."""
        nodes: list[Any] = []
        for node, where, tokens in self.items:
            if node is not None:
                nodes.append(node)
                continue
            head = tokens[0]
            word = head.text if head.kind == "ident" else ""
            if word in _UNSUPPORTED:
                raise TemplateError(
                    f"{head.where}: {{{{{word}}}}} is not supported in module templates "
                    f"(if, else, end and the functions {', '.join(FUNCTIONS)} are)"
                )
            if word == "if":
                nodes.append(self._if(tokens[1:], where))
            elif word in ("else", "end"):
                return tuple(nodes), word, where, tokens
            else:
                nodes.append(Action(self._pipeline(tokens, where), where))
        return tuple(nodes), None, "", []

    def _if(self, tokens: list[_Token], where: str) -> If:
        condition = self._pipeline(tokens, where)
        then, ending, at, words = self._list()
        if ending is None:
            raise TemplateError(f"{where}: unexpected EOF: {{{{if}}}} without {{{{end}}}}")
        if ending == "end":
            self._bare(words)
            return If(condition, then, (), where)
        if len(words) > 1 and words[1].kind == "ident" and words[1].text == "if":
            # `else if` is an `if` in the else branch, ended by the same `end`
            return If(condition, then, (self._if(words[2:], at),), where)
        self._bare(words)
        otherwise, ending, at, words = self._list()
        if ending != "end":
            raise TemplateError(
                f"{at or where}: expected {{{{end}}}} after {{{{else}}}}"
                + (f", found {{{{{ending}}}}}" if ending else "")
            )
        self._bare(words)
        return If(condition, then, otherwise, where)

    @staticmethod
    def _bare(words: list[_Token]) -> None:
        if len(words) > 1:
            raise TemplateError(
                f"{words[1].where}: unexpected {words[1].text!r} in {words[0].text}"
            )

    def _pipeline(self, tokens: list[_Token], where: str) -> Pipeline:
        pipeline, rest = self._parse_pipeline(tokens, where)
        if rest:
            raise TemplateError(f"{rest[0].where}: unexpected {rest[0].text!r}")
        return pipeline

    def _parse_pipeline(self, tokens: list[_Token], where: str) -> tuple[Pipeline, list[_Token]]:
        commands = []
        args: list[Any] = []
        rest = list(tokens)
        cmd_where = tokens[0].where if tokens else where
        while rest:
            token = rest[0]
            if token.text == ")":
                break
            rest.pop(0)
            if token.text == "|":
                if not args:
                    raise TemplateError(f"{token.where}: missing command before '|'")
                commands.append(Command(tuple(args), cmd_where))
                args = []
                cmd_where = rest[0].where if rest else token.where
                continue
            if token.text == "(":
                inner, rest = self._parse_pipeline(rest, token.where)
                if not rest or rest[0].text != ")":
                    raise TemplateError(f"{token.where}: unclosed left paren")
                rest.pop(0)
                args.append(inner)
                continue
            args.append(self._operand(token))
        if not args:
            raise TemplateError(f"{cmd_where}: missing value for command")
        commands.append(Command(tuple(args), cmd_where))
        for command in commands[1:]:
            if not isinstance(command.args[0], Identifier):
                raise TemplateError(f"{command.where}: non executable command in pipeline stage")
        for command in commands:
            head = command.args[0]
            if not isinstance(head, Identifier) and len(command.args) > 1:
                raise TemplateError(f"{command.where}: can't give argument to non-function")
        return Pipeline(tuple(commands), where), rest

    def _operand(self, token: _Token) -> Any:
        if token.kind == "field":
            path = tuple(p for p in token.text.split(".") if p)
            return Field(path, token.where)
        if token.kind == "variable":
            if token.text != "$":
                raise TemplateError(f"{token.where}: variables are not supported ({token.text})")
            return Field((), token.where)
        if token.kind in ("string", "raw"):
            return Literal(_unquote(token.text, token.where), token.where)
        if token.kind == "char":
            return Literal(ord(_unquote('"' + token.text[1:-1] + '"', token.where)), token.where)
        if token.kind == "number":
            return Literal(_number(token.text, token.where), token.where)
        if token.kind == "ident":
            if token.text in ("true", "false"):
                return Literal(token.text == "true", token.where)
            if token.text == "nil":
                return Literal(None, token.where)
            if token.text in ("if", "else", "end"):
                raise TemplateError(f"{token.where}: unexpected {token.text!r} in operand")
            if token.text not in FUNCTIONS:
                raise TemplateError(
                    f'{token.where}: function "{token.text}" not defined (module templates '
                    f"have {', '.join(FUNCTIONS)})"
                )
            return Identifier(token.text, token.where)
        raise TemplateError(f"{token.where}: unexpected {token.text!r}")


_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unquote(text: str, where: str) -> str:
    if text.startswith("`"):
        return text[1:-1].replace("\r", "")
    out = []
    i = 1
    body = text[:-1]
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _GO_ESCAPES:
            out.append(_GO_ESCAPES[e])
            i += 2
        elif e in "\\'\"":
            out.append(e)
            i += 2
        elif e in "xuU":
            size = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + size]
            if len(digits) != size or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise TemplateError(f"{where}: malformed escape in {text}")
            out.append(chr(int(digits, 16)))
            i += 2 + size
        elif e in "01234567":
            digits = body[i + 1 : i + 4]
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise TemplateError(f"{where}: unknown escape \\{e} in {text}")
    return "".join(out)


def _number(text: str, where: str) -> int | float:
    clean = text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", clean):
            return int(clean, 16)
        if re.fullmatch(r"[+-]?\d+", clean):
            return int(clean)
        return float(clean)
    except ValueError:
        raise TemplateError(f"{where}: bad number syntax: {text!r}") from None


# --- the template --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A parsed template. :meth:`parse` it once, :meth:`execute` it with any data."""

    name: str
    nodes: tuple[Any, ...]
    fields: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, text: str, name: str = "template") -> Template:
        """Parse a template.

        Raises:
            TemplateError: naming ``name:line:column`` and what is wrong there.
        """
        nodes = _Parser(_Source(name, text)).parse()
        seen: dict[str, None] = {}
        for node in _walk(nodes):
            if isinstance(node, Field) and node.path:
                seen.setdefault(node.path[0])
        return cls(name, nodes, tuple(seen))

    def execute(self, data: Mapping[str, Any], sink: Sink | None = None) -> str:
        """Run the template on ``data`` (a string, a :class:`Tainted` or a number by name).

        Returns:
            The output, when ``sink`` is a :class:`StringSink` or left out; else ``""``.

        Raises:
            TemplateError: an error Go's template would stop at (a function's bad input...).
        """
        out = sink if sink is not None else StringSink()
        _Exec(data, out).nodes(self.nodes)
        return out.getvalue() if isinstance(out, StringSink) else ""

    def defaults(self) -> dict[str, str]:
        """What each field stands for when it is not given, where the template says so with
        ``{{ if .X }}...{{ else }}TEXT{{ end }}`` (TEXT without actions) or ``{{ or .X LITERAL }}``:
        TEXT (or the literal) as written, a JSON string decoded."""
        found: dict[str, str] = {}
        for node in _walk(self.nodes):
            if isinstance(node, If):
                name = _lone_field(node.condition)
                texts = [n.text for n in node.otherwise if isinstance(n, Text)]
                if name and node.otherwise and len(texts) == len(node.otherwise):
                    found.setdefault(name, _decoded("".join(texts).strip()))
            elif isinstance(node, Command) and len(node.args) == 3:
                head, first, second = node.args
                if (
                    isinstance(head, Identifier)
                    and head.name == "or"
                    and isinstance(first, Field)
                    and len(first.path) == 1
                    and isinstance(second, Literal)
                    and isinstance(second.value, str)
                ):
                    found.setdefault(first.path[0], _decoded(second.value))
        return found


def _decoded(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _lone_field(pipeline: Pipeline) -> str | None:
    if len(pipeline.commands) != 1 or len(pipeline.commands[0].args) != 1:
        return None
    only = pipeline.commands[0].args[0]
    return only.path[0] if isinstance(only, Field) and len(only.path) == 1 else None


def _walk(nodes: tuple[Any, ...]) -> Iterator[Any]:
    for node in nodes:
        yield node
        if isinstance(node, If):
            yield from _walk((node.condition,))
            yield from _walk(node.then)
            yield from _walk(node.otherwise)
        elif isinstance(node, Action):
            yield from _walk((node.pipeline,))
        elif isinstance(node, Pipeline):
            yield from _walk(node.commands)
        elif isinstance(node, Command):
            yield from _walk(node.args)


# --- execution -----------------------------------------------------------------------------------


def truth(value: Any) -> bool:
    """Go's truth: false, 0, "", nil and no value are false."""
    if value is MISSING or value is None:
        return False
    if isinstance(value, Tainted):
        return bool(value.text)
    return bool(value)


def _names(*values: Any) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for value in values:
        if isinstance(value, Tainted):
            out |= value.names
    return out


def _text(value: Any) -> str:
    """A value as Go's ``fmt.Sprint`` writes it."""
    if isinstance(value, Tainted):
        return value.text
    if value is MISSING:
        return NO_VALUE
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def _go_float(value: float) -> str:
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        mantissa = mantissa.removesuffix(".0")
        sign = "-" if exponent.startswith("-") else "+"
        text = f"{mantissa}e{sign}{abs(int(exponent)):02d}"
    return text.removesuffix(".0")


class _Exec:
    def __init__(self, data: Mapping[str, Any], sink: Sink) -> None:
        self.data = data
        self.sink = sink

    def nodes(self, nodes: tuple[Any, ...]) -> None:
        for node in nodes:
            if isinstance(node, Text):
                self.sink.text(node.text)
            elif isinstance(node, Action):
                value = self.pipeline(node.pipeline)
                if isinstance(value, Tainted):
                    self.sink.value(value, node.where)
                else:
                    self.sink.text(_text(value))
            elif isinstance(node, If):
                branch = node.then if truth(self.pipeline(node.condition)) else node.otherwise
                self.nodes(branch)

    def pipeline(self, pipeline: Pipeline) -> Any:
        value: Any = MISSING
        for i, command in enumerate(pipeline.commands):
            extra = (value,) if i else ()
            value = self.command(command, extra)
        return value

    def command(self, command: Command, extra: tuple[Any, ...]) -> Any:
        head = command.args[0]
        if isinstance(head, Identifier):
            return self.call(head, command.args[1:], extra)
        return self.operand(head)

    def operand(self, node: Any) -> Any:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Pipeline):
            return self.pipeline(node)
        if isinstance(node, Identifier):
            return self.call(node, (), ())
        assert isinstance(node, Field)
        value: Any = self.data
        for name in node.path:
            if isinstance(value, Mapping):
                value = value.get(name, MISSING)
            elif value is MISSING:
                return MISSING
            else:
                raise TemplateError(
                    f"{node.where}: can't evaluate field {name} in type {_go_type(value)}"
                )
        return value

    def call(self, head: Identifier, nodes: tuple[Any, ...], extra: tuple[Any, ...]) -> Any:
        name = head.name
        if name in ("and", "or"):
            # short-circuit, as Go does since 1.18: later arguments are not evaluated
            items = [*nodes, *extra]
            if not items:
                raise TemplateError(f"{head.where}: wrong number of args for {name}: want 1+")
            value: Any = MISSING
            for item in items:
                value = item if item is not MISSING and not _is_node(item) else self.arg(item)
                if truth(value) != (name == "and"):
                    return value
            return value
        args = [self.arg(node) for node in nodes] + list(extra)
        try:
            return _FUNCS[name](*args)
        except _CallError as exc:
            raise TemplateError(f"{head.where}: error calling {name}: {exc}") from None

    def arg(self, node: Any) -> Any:
        return self.operand(node) if _is_node(node) else node


def _is_node(value: Any) -> bool:
    return isinstance(value, Field | Literal | Identifier | Pipeline)


def _go_type(value: Any) -> str:
    if isinstance(value, Tainted | str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    return "interface {}"


class _CallError(Exception):
    pass


def _not(*args: Any) -> bool:
    if len(args) != 1:
        raise _CallError(f"wrong number of args for not: want 1 got {len(args)}")
    return not truth(args[0])


def _comparable(value: Any) -> Any:
    if value is MISSING or value is None:
        raise _CallError("invalid type for comparison")
    if isinstance(value, Tainted):
        return ("string", value.text)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    return ("string", value)


def _eq(*args: Any) -> bool:
    if len(args) < 2:
        raise _CallError("missing argument for comparison")
    first = _comparable(args[0])
    for other in args[1:]:
        kind, value = _comparable(other)
        if kind != first[0]:
            raise _CallError("incompatible types for comparison")
        if value == first[1]:
            return True
    return False


def _ne(*args: Any) -> bool:
    if len(args) != 2:
        raise _CallError(f"wrong number of args for ne: want 2 got {len(args)}")
    return not _eq(*args)


def _sprint(args: tuple[Any, ...]) -> str:
    """Go's ``fmt.Sprint``: spaces only between operands when neither is a string."""
    out = []
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str | Tainted)
        if i and not is_string and not isinstance(args[i - 1], str | Tainted):
            out.append(" ")
        out.append(_text(arg))
    return "".join(out)


def _evalargs(args: tuple[Any, ...]) -> str:
    if len(args) == 1 and isinstance(args[0], str | Tainted):
        return _text(args[0])
    return _sprint(args)


def _print(*args: Any) -> Any:
    text = _sprint(args)
    names = _names(*args)
    return Tainted(text, text, names) if names else text


def js_escape(text: str) -> str:
    """Go's ``template.JSEscapeString``."""
    out = []
    for char in text:
        if char in _JS:
            out.append(_JS[char])
        elif char < " ":
            out.append(f"\\u00{ord(char):02X}")
        elif ord(char) < 0x80 or _go_printable(char):
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04X}")
    return "".join(out)


_JS = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "<": "\\u003C",
    ">": "\\u003E",
    "&": "\\u0026",
    "=": "\\u003D",
}


def _go_printable(char: str) -> bool:
    """Go's ``unicode.IsPrint``: letters, marks, numbers, punctuation, symbols, ASCII space."""
    return unicodedata.category(char)[0] in "LMNPS"


def _js(*args: Any) -> Any:
    text = _evalargs(args)
    names = _names(*args)
    escaped = js_escape(text)
    return Tainted(escaped, text, names) if names else escaped


def go_json_string(text: str) -> str:
    """A string as Go's ``json.Marshal`` writes it (HTML-safe: ``<``, ``>``, ``&`` escaped)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char])
        elif code < 0x20 or char in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _subst(*args: Any) -> Any:
    if not args:
        raise _CallError("wrong number of args for subst: want at least 1 got 0")
    form, *rest = args
    if not isinstance(form, str | Tainted):
        raise _CallError(f"wrong type for value; expected string; got {_go_type(form)}")
    decoded = []
    for arg in rest:
        if arg is MISSING:
            raise _CallError("invalid value; expected string")
        if not isinstance(arg, str | Tainted):
            raise _CallError(f"wrong type for value; expected string; got {_go_type(arg)}")
        try:
            value = json.loads(_text(arg))
        except ValueError:
            value = 0
        if value is None:
            value = ""  # Go's json.Unmarshal of null into a string leaves it empty
        if not isinstance(value, str):
            raise _CallError(f"subst: invalid input {_text(arg)!r}: not a JSON string")
        decoded.append(value)
    text = sprintf(_text(form), decoded)
    names = _names(*args)
    return Tainted(text, text, names) if names else text


def _printf(*args: Any) -> Any:
    if not args:
        raise _CallError("wrong number of args for printf: want at least 1 got 0")
    form, *rest = args
    text = sprintf(_text(form), list(rest))
    names = _names(*args)
    return Tainted(text, text, names) if names else text


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def sprintf(form: str, args: list[Any]) -> str:
    """Go's ``fmt.Sprintf`` for the verbs ``%s``, ``%v``, ``%d``, ``%q`` and ``%%`` (with
    width and ``-``), its ``%!verb(type=value)`` forms for a wrong type, ``%!s(MISSING)`` and
    ``%!(EXTRA ...)``."""
    out = []
    used = 0
    pos = 0
    for m in _VERB.finditer(form):
        out.append(form[pos : m.start()])
        pos = m.end()
        flags, width, _, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[used]
        used += 1
        text = _format(verb, arg)
        if width:
            pad = int(width) - len(text)
            text = text + " " * pad if "-" in flags else " " * pad + text
        out.append(text)
    out.append(form[pos:])
    if used < len(args):
        extra = ", ".join(f"{_go_type(a)}={_text(a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format(verb: str, arg: Any) -> str:
    is_string = isinstance(arg, str | Tainted)
    is_int = isinstance(arg, int) and not isinstance(arg, bool)
    if verb in "sv" and (is_string or verb == "v"):
        return _text(arg)
    if verb == "s":
        return f"%!s({_go_type(arg)}={_text(arg)})"
    if verb == "d" and is_int:
        return str(arg)
    if verb == "q" and is_string:
        return go_json_string(_text(arg)).replace("\\u003c", "<").replace("\\u003e", ">")
    return f"%!{verb}({_go_type(arg)}={_text(arg)})"


_FUNCS: dict[str, Callable[..., Any]] = {
    "not": _not,
    "eq": _eq,
    "ne": _ne,
    "js": _js,
    "print": _print,
    "printf": _printf,
    "subst": _subst,
}


__all__ = [
    "MISSING",
    "NO_VALUE",
    "Sink",
    "StringSink",
    "Tainted",
    "Template",
    "go_json_string",
    "js_escape",
    "sprintf",
    "truth",
]
