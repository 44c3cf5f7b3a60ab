"""Alert templates: the part of Go's text/template that Prometheus rule files use.

Prometheus expands alert labels and annotations with Go's text/template plus its own function
table, so a rule file written for Prometheus only works here if `{{ $value | humanize }}` gives
the same text. This module parses a template once, at rule-load time (so a misspelt function
fails the load, as in Prometheus), and executes it per alert. Supported: text, `{{- -}}` trims,
comments, pipelines with `|`, variables (`$labels`, `$value`, `$externalLabels`,
`$externalURL`, `$`, and `:=`/`=`), `.Field` chains, parenthesised pipelines, `if`/`else
if`/`else`, `range` (with `$i, $v :=` and `else`), `with`, and the functions below. Not
supported: `define`, `template`, `block`, `break`, `continue`, method calls.

Values keep Go's types apart where Prometheus users can see it: a number literal with a `.` or
exponent is a float64, without one an int, and `gt $value 80` (float64 against int) fails with
Go's "incompatible types for comparison". Formatting follows Go's fmt (`%v` of 1e6 is "1e+06").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote_plus, urlparse

# Prometheus prepends these definitions to every alert template; error columns count them.
PREFIX_LEN = len(
    "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}"
    "{{$externalURL := .ExternalURL}}{{$value := .Value}}"
)
PREDEFINED = ("$", "$labels", "$externalLabels", "$externalURL", "$value")
_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break"}
_KEYWORDS |= {"continue", "true", "false", "nil"}


class TemplateError(Exception):
    """A template that does not parse (reported when rules load)."""


class ExecError(Exception):
    """A template failed while expanding; Prometheus puts the message into the annotation."""


# ---------------------------------------------------------------------------------- lexer


@dataclass(frozen=True, slots=True)
class Tok:
    kind: str  # text left right space ident field var dot string number char pipe ( ) := = , eof
    val: str
    pos: int


_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|"
    r"(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = re.compile(r"[ \t\r\n]+")
_WS = " \t\r\n"


def _is_ws(ch: str) -> bool:
    return ch != "" and ch in _WS


def _lex(text: str, name: str) -> list[Tok]:
    """Tokens of the whole template; text between actions is one `text` token."""
    toks: list[Tok] = []
    i, n = 0, len(text)
    trim_next = False
    while i < n:
        j = text.find("{{", i)
        end = n if j < 0 else j
        chunk = text[i:end]
        if trim_next:
            chunk = chunk.lstrip(_WS)
        trim_left = j >= 0 and text[j + 2 : j + 3] == "-" and _is_ws(text[j + 3 : j + 4])
        if trim_left:
            chunk = chunk.rstrip(_WS)
        if chunk:
            toks.append(Tok("text", chunk, i))
        if j < 0:
            break
        i = j + (4 if trim_left else 2)
        k = len(text) - len(text[i:].lstrip(_WS)) if trim_left else i
        if text.startswith("/*", k):
            close = text.find("*/", k + 2)
            if close < 0:
                raise _parse_err(name, text, j, "unclosed comment")
            i = close + 2
            rest = text[i:].lstrip(_WS)
            if rest.startswith("-}}") and len(rest) < n - i:
                trim_next, i = True, n - len(rest) + 3
            elif text.startswith("}}", i):
                trim_next, i = False, i + 2
            else:
                raise _parse_err(name, text, j, "comment ends before closing delimiter")
            continue
        toks.append(Tok("left", "{{", j))
        i, trim_next = _lex_action(text, i, toks, name)
    toks.append(Tok("eof", "", n))
    return toks


def _lex_action(text: str, i: int, toks: list[Tok], name: str) -> tuple[int, bool]:
    """Tokens of one action; returns the index after `}}` and whether it trims right."""
    n = len(text)
    while True:
        if i >= n:
            raise _parse_err(name, text, i, "unclosed action")
        c = text[i]
        m = _SPACE.match(text, i)
        if m:
            if text.startswith("-}}", m.end()):
                toks.append(Tok("right", "}}", m.end()))
                return m.end() + 3, True
            toks.append(Tok("space", m.group(), i))
            i = m.end()
            continue
        if text.startswith("}}", i):
            toks.append(Tok("right", "}}", i))
            return i + 2, False
        if c == '"':
            k = i + 1
            while k < n and text[k] != '"':
                if text[k] == "\\":
                    k += 1
                if k < n and text[k] == "\n":
                    raise _parse_err(name, text, i, "unterminated quoted string")
                k += 1
            if k >= n:
                raise _parse_err(name, text, i, "unterminated quoted string")
            toks.append(Tok("string", _unquote(text[i + 1 : k], name, text, i), i))
            i = k + 1
        elif c == "`":
            k = text.find("`", i + 1)
            if k < 0:
                raise _parse_err(name, text, i, "unterminated raw quoted string")
            toks.append(Tok("string", text[i + 1 : k], i))
            i = k + 1
        elif c == "'":
            m2 = re.compile(r"'(\\.[^']*|[^'\\])'").match(text, i)
            if not m2:
                raise _parse_err(name, text, i, "unterminated character constant")
            toks.append(Tok("char", _unquote(m2.group(1), name, text, i), i))
            i = m2.end()
        elif c == "$":
            m2 = re.compile(r"\$[A-Za-z0-9_]*").match(text, i)
            assert m2 is not None
            toks.append(Tok("var", m2.group(), i))
            i = m2.end()
        elif c == "." and i + 1 < n and (text[i + 1].isalpha() or text[i + 1] == "_"):
            m2 = _IDENT.match(text, i + 1)
            assert m2 is not None
            toks.append(Tok("field", m2.group(), i))
            i = m2.end()
        elif (m2 := _NUMBER.match(text, i)) and (c.isdigit() or c in "+-." and m2.end() > i + 1):
            toks.append(Tok("number", m2.group(), i))
            i = m2.end()
        elif c == ".":
            toks.append(Tok("dot", ".", i))
            i += 1
        elif c.isalpha() or c == "_":
            m2 = _IDENT.match(text, i)
            assert m2 is not None
            toks.append(Tok("ident", m2.group(), i))
            i = m2.end()
        elif text.startswith(":=", i):
            toks.append(Tok(":=", ":=", i))
            i += 2
        elif c in "|()=,":
            toks.append(Tok(c, c, i))
            i += 1
        else:
            raise _parse_err(name, text, i, f"unexpected {c!r} in command")


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unquote(body: str, name: str, text: str, pos: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1 : i + 2]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in ('"', "\\", "'"):
            out.append(e)
            i += 2
        elif e in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not re.fullmatch(r"[0-9a-fA-F]+", digits):
                raise _parse_err(name, text, pos, "invalid syntax")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:
            raise _parse_err(name, text, pos, "invalid syntax")
    return "".join(out)


def _location(name: str, text: str, pos: int) -> str:
    before = text[:pos]
    line = before.count("\n") + 1
    col = pos - (before.rfind("\n") + 1) + (PREFIX_LEN if line == 1 else 0)
    return f"{name}:{line}:{col}"


def _parse_err(name: str, text: str, pos: int, msg: str) -> TemplateError:
    line = text[:pos].count("\n") + 1
    return TemplateError(f"template: {name}:{line}: {msg}")


# ----------------------------------------------------------------------------------- AST


@dataclass(slots=True)
class Field:
    pos: int
    base: Any  # "." for dot, "$name" for a variable, or a Pipe (parenthesised)
    names: list[str]


@dataclass(slots=True)
class Ident:
    pos: int
    name: str


@dataclass(slots=True)
class Lit:
    pos: int
    value: Any


@dataclass(slots=True)
class Cmd:
    pos: int
    args: list[Any]
    text: str


@dataclass(slots=True)
class Pipe:
    pos: int
    decl: list[str]
    assign: bool
    cmds: list[Cmd]


@dataclass(slots=True)
class Action:
    pipe: Pipe


@dataclass(slots=True)
class Branch:
    kind: str  # if, range, with
    pipe: Pipe
    body: list[Any]
    else_body: list[Any] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str, name: str, funcs: Mapping[str, object]) -> None:
        self.text, self.name, self.funcs = text, name, funcs
        self.toks = _lex(text, name)
        self.i = 0
        self.scopes: list[list[str]] = [list(PREDEFINED)]

    def err(self, pos: int, msg: str) -> TemplateError:
        return _parse_err(self.name, self.text, pos, msg)

    def peek(self) -> Tok:
        while self.toks[self.i].kind == "space":
            self.i += 1
        return self.toks[self.i]

    def next(self) -> Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, kind: str, context: str) -> Tok:
        tok = self.next()
        if tok.kind != kind:
            raise self.err(tok.pos, f"unexpected {_describe(tok)} in {context}")
        return tok

    def parse(self) -> list[Any]:
        return self.items(set())[0]

    def items(self, stops: set[str]) -> tuple[list[Any], str]:
        nodes: list[Any] = []
        while True:
            tok = self.toks[self.i]
            if tok.kind == "eof":
                if stops:
                    raise self.err(tok.pos, "unexpected EOF")
                return nodes, ""
            self.i += 1
            if tok.kind == "text":
                nodes.append(tok.val)
                continue
            key = self.peek()
            if key.kind == "ident" and key.val in ("end", "else"):
                if key.val not in stops:
                    raise self.err(key.pos, f"unexpected {{{{{key.val}}}}}")
                self.i += 1
                return nodes, key.val
            if key.kind == "ident" and key.val in ("if", "range", "with"):
                self.i += 1
                nodes.append(self.branch(key.val))
            elif key.kind == "ident" and key.val in ("define", "template", "block", "break"):
                raise self.err(key.pos, f"{{{{{key.val}}}}} is not supported here")
            elif key.kind == "ident" and key.val == "continue":
                raise self.err(key.pos, "{{continue}} is not supported here")
            else:
                pipe = self.pipeline("command", "right", allow_decl=True)
                nodes.append(Action(pipe))

    def branch(self, kind: str) -> Branch:
        self.scopes.append([])
        node = Branch(kind, self.pipeline(kind, "right", allow_decl=True), [])
        node.body, stop = self.items({"end", "else"})
        if stop == "else":
            nxt = self.peek()
            if kind == "if" and nxt.kind == "ident" and nxt.val == "if":
                self.i += 1
                node.else_body = [self.branch("if")]  # shares, and consumes, our {{end}}
                self.scopes.pop()
                return node
            self.expect("right", "else")
            node.else_body, _ = self.items({"end"})
        self.expect("right", "end")
        self.scopes.pop()
        return node

    def declared(self, name: str) -> bool:
        return any(name in scope for scope in self.scopes)

    def pipeline(self, context: str, end: str, *, allow_decl: bool) -> Pipe:
        start = self.peek().pos
        decl: list[str] = []
        assign = False
        save = self.i
        if allow_decl and self.peek().kind == "var":
            names = [self.next()]
            if context == "range" and self.peek().kind == ",":
                self.next()
                names.append(self.expect("var", "range declaration"))
            op = self.peek()
            if op.kind in (":=", "="):
                self.next()
                assign = op.kind == "="
                for tok in names:
                    if assign and not self.declared(tok.val):
                        raise self.err(tok.pos, f'undefined variable "{tok.val}"')
                decl = [t.val for t in names]
            else:
                self.i = save
        cmds: list[Cmd] = []
        while True:
            tok = self.peek()
            if tok.kind == end:
                self.next()
                break
            cmds.append(self.command(end))
            sep = self.peek()
            if sep.kind == "|":
                self.next()
                if self.peek().kind == end:
                    raise self.err(sep.pos, "missing command")
        if not cmds:
            raise self.err(start, f"missing value for {context}")
        if decl and not assign:
            self.scopes[-1].extend(decl)
        for stage, cmd in enumerate(cmds[1:], start=2):
            first = cmd.args[0]
            if (
                isinstance(first, Lit)
                or isinstance(first, Field)
                and first.base == "."
                and not first.names
            ):
                raise self.err(cmd.pos, f"non executable command in pipeline stage {stage}")
        return Pipe(start, decl, assign, cmds)

    def command(self, end: str) -> Cmd:
        start = self.peek().pos
        args: list[Any] = []
        while True:
            tok = self.peek()
            if tok.kind in (end, "|"):
                break
            if tok.kind == "right" or tok.kind == ")" or tok.kind == "eof":
                raise self.err(tok.pos, f"unexpected {_describe(tok)} in operand")
            args.append(self.operand())
            nxt = self.toks[self.i]
            if nxt.kind not in ("space", end, "|"):
                raise self.err(nxt.pos, f"unexpected {_describe(nxt)} in operand")
        if not args:
            raise self.err(start, "empty command")
        stop = self.toks[self.i].pos
        return Cmd(start, args, self.text[start:stop].strip())

    def operand(self) -> Any:
        tok = self.next()
        node: Any
        if tok.kind == "ident":
            if tok.val in ("true", "false"):
                node = Lit(tok.pos, tok.val == "true")
            elif tok.val == "nil":
                node = Lit(tok.pos, None)
            elif tok.val in _KEYWORDS:
                raise self.err(tok.pos, f"unexpected <{tok.val}> in command")
            elif tok.val not in self.funcs:
                raise self.err(tok.pos, f'function "{tok.val}" not defined')
            else:
                node = Ident(tok.pos, tok.val)
        elif tok.kind == "field":
            node = Field(tok.pos, ".", [tok.val])
        elif tok.kind == "dot":
            node = Field(tok.pos, ".", [])
        elif tok.kind == "var":
            if not self.declared(tok.val):
                raise self.err(tok.pos, f'undefined variable "{tok.val}"')
            node = Field(tok.pos, tok.val, [])
        elif tok.kind == "string":
            node = Lit(tok.pos, tok.val)
        elif tok.kind == "char":
            node = Lit(tok.pos, ord(tok.val))
        elif tok.kind == "number":
            node = Lit(tok.pos, _number(tok.val, self, tok.pos))
        elif tok.kind == "(":
            node = Field(
                tok.pos, self.pipeline("parenthesized pipeline", ")", allow_decl=False), []
            )
        else:
            raise self.err(tok.pos, f"unexpected {_describe(tok)} in operand")
        while self.toks[self.i].kind == "field":
            if isinstance(node, Lit | Ident):
                raise self.err(self.toks[self.i].pos, "unexpected . after term")
            node.names.append(self.toks[self.i].val)
            self.i += 1
        return node


def _number(text: str, parser: _Parser, pos: int) -> int | float:
    clean = text.replace("_", "")
    low = clean.lower().lstrip("+-")
    try:
        if low.startswith(("0x", "0b", "0o")):
            return int(clean, 0)
        if any(c in low for c in ".e"):
            return float(clean)
        return int(clean, 10)
    except ValueError:
        raise parser.err(pos, f"bad number syntax: {text!r}") from None


def _describe(tok: Tok) -> str:
    if tok.kind == "eof":
        return "EOF"
    if tok.kind == "right":
        return "<}}>"
    return f"<{tok.val}>"


# ----------------------------------------------------------------------------- execution


@dataclass(frozen=True, slots=True)
class GoStruct:
    """A Go struct value: named fields, as Prometheus's template data and query samples are."""

    type_name: str
    fields: dict[str, Any]


_MISSING = object()


class Template:
    """A parsed template; `expand(data, funcs)` runs it. Construct with `parse`."""

    def __init__(self, text: str, name: str, funcs: Mapping[str, Callable[..., Any]]) -> None:
        self.text, self.name, self.funcs = text, name, funcs
        self.nodes = _Parser(text, name, funcs).parse()

    def expand(self, data: Any, funcs: Mapping[str, Callable[..., Any]] | None = None) -> str:
        """The expanded text; raises ExecError with Go's wording when execution fails."""
        run = _Exec(self, self.funcs if funcs is None else funcs)
        variables: list[tuple[str, Any]] = [("$", data)]
        if isinstance(data, GoStruct):
            variables += [
                ("$labels", data.fields.get("Labels")),
                ("$externalLabels", data.fields.get("ExternalLabels")),
                ("$externalURL", data.fields.get("ExternalURL")),
                ("$value", data.fields.get("Value")),
            ]
        out: list[str] = []
        run.walk(data, self.nodes, out, variables)
        return "".join(out)


class _Exec:
    """One expansion: the template's nodes walked with a function table bound to it."""

    def __init__(self, tmpl: Template, funcs: Mapping[str, Callable[..., Any]]) -> None:
        self.text, self.name, self.funcs = tmpl.text, tmpl.name, funcs

    def walk(self, dot: Any, nodes: list[Any], out: list[str], vs: list[tuple[str, Any]]) -> None:
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, Action):
                value = self.pipe(dot, node.pipe, vs)
                if not node.pipe.decl:
                    out.append(_print(value))
            else:
                mark = len(vs)
                self.branch(dot, node, out, vs)
                del vs[mark:]

    def branch(self, dot: Any, node: Branch, out: list[str], vs: list[tuple[str, Any]]) -> None:
        if node.kind == "range":
            value = self.pipe(dot, node.pipe, vs, declare=False)
            items = _range_items(value, lambda m: self.err(node.pipe.pos, node.pipe, m))
            if not items:
                self.walk(dot, node.else_body, out, vs)
                return
            for key, elem in items:
                mark = len(vs)
                if len(node.pipe.decl) == 1:
                    vs.append((node.pipe.decl[0], elem))
                elif len(node.pipe.decl) == 2:
                    vs.append((node.pipe.decl[0], key))
                    vs.append((node.pipe.decl[1], elem))
                self.walk(elem, node.body, out, vs)
                del vs[mark:]
            return
        value = self.pipe(dot, node.pipe, vs)
        if truth(value):
            self.walk(value if node.kind == "with" else dot, node.body, out, vs)
        else:
            self.walk(dot, node.else_body, out, vs)

    def err(self, pos: int, where: Cmd | Pipe, msg: str) -> ExecError:
        context = where.text if isinstance(where, Cmd) else _pipe_text(where)
        return ExecError(
            f"template: {_location(self.name, self.text, pos)}: executing "
            f'"{self.name}" at <{context}>: {msg}'
        )

    def pipe(self, dot: Any, pipe: Pipe, vs: list[tuple[str, Any]], declare: bool = True) -> Any:
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.cmd(dot, cmd, value, vs)
        if declare and pipe.decl:
            for name in pipe.decl:
                if pipe.assign:
                    for k in range(len(vs) - 1, -1, -1):
                        if vs[k][0] == name:
                            vs[k] = (name, value)
                            break
                else:
                    vs.append((name, value))
        return value

    def cmd(self, dot: Any, cmd: Cmd, final: Any, vs: list[tuple[str, Any]]) -> Any:
        first = cmd.args[0]
        if isinstance(first, Ident):
            args = [self.arg(dot, a, vs, cmd) for a in cmd.args[1:]]
            if final is not _MISSING:
                args.append(final)
            return self.call(first.name, args, cmd)
        if len(cmd.args) > 1 or final is not _MISSING:
            raise self.err(cmd.pos, cmd, f"can't give argument to non-function {cmd.text}")
        return self.arg(dot, first, vs, cmd)

    def arg(self, dot: Any, node: Any, vs: list[tuple[str, Any]], cmd: Cmd) -> Any:
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, Ident):
            return self.call(node.name, [], cmd)
        assert isinstance(node, Field)
        if node.base == ".":
            value = dot
        elif isinstance(node.base, Pipe):
            value = self.pipe(dot, node.base, vs)
        else:
            value = next(v for k, v in reversed(vs) if k == node.base)
        for name in node.names:
            value = self.field(value, name, cmd)
        return value

    def field(self, value: Any, name: str, cmd: Cmd) -> Any:
        if isinstance(value, GoStruct):
            if name in value.fields:
                return value.fields[name]
            msg = f"can't evaluate field {name} in type {value.type_name}"
        elif isinstance(value, dict):
            return value.get(name, "")
        elif value is None:
            msg = f"nil pointer evaluating interface {{}}.{name}"
        else:
            msg = f"can't evaluate field {name} in type {go_type(value)}"
        raise self.err(cmd.pos, cmd, msg)

    def call(self, name: str, args: list[Any], cmd: Cmd) -> Any:
        fn = self.funcs[name]
        try:
            return fn(*args)
        except _ArgError as exc:
            raise self.err(cmd.pos, cmd, str(exc)) from None
        except ExecError:
            raise
        except Exception as exc:  # Go reports any function's error the same way
            raise self.err(cmd.pos, cmd, f"error calling {name}: {exc}") from None


def _pipe_text(pipe: Pipe) -> str:
    return " | ".join(c.text for c in pipe.cmds)


def _range_items(value: Any, err: Callable[[str], Exception]) -> list[tuple[Any, Any]]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [(k, value[k]) for k in sorted(value)]
    if isinstance(value, list | tuple):
        return list(enumerate(value))
    raise err(f"range can't iterate over {_print(value)}")


def truth(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings, maps and lists are false."""
    if value is None or value is _MISSING:
        return False
    if isinstance(value, bool | int | float):
        return bool(value)
    if isinstance(value, str | dict | list | tuple):
        return len(value) > 0
    return True


def _print(value: Any) -> str:
    if value is None or value is _MISSING:
        return "<no value>"
    return go_format_value(value)


# -------------------------------------------------------------------------- Go's fmt


def go_type(value: Any) -> str:
    """The Go type name fmt and template errors print for a value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "map[string]string"
    if isinstance(value, list):
        return "template.queryResult"
    if isinstance(value, GoStruct):
        return value.type_name
    return type(value).__name__


def _digits(v: float, sig: int | None) -> tuple[str, int]:
    """Decimal digits of |v| (no trailing zeros) and the decimal point position, so that
    |v| = 0.DIGITS x 10**dp; `sig` significant digits, or the shortest round-trip ones."""
    text = repr(abs(v)) if sig is None else f"{abs(v):.{max(sig, 1) - 1}e}"
    sign, digits, exp = Decimal(text).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    nd_all = len(digits)
    assert isinstance(exp, int)
    return ds, nd_all + exp


def _special(v: float) -> str | None:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return None


def go_g(v: float, prec: int = -1) -> str:
    """Go's %g (prec -1: shortest, as %v prints a float64); %.4g is what humanize uses."""
    special = _special(v)
    if special is not None:
        return special
    neg = "-" if math.copysign(1.0, v) < 0 else ""
    if v == 0:
        return neg + "0"
    shortest = prec < 0
    ds, dp = _digits(v, None if shortest else max(prec, 1))
    nd = len(ds)
    eprec = 6 if shortest else max(prec, 1)
    if not shortest and eprec > nd >= dp:
        eprec = nd
    exp = dp - 1
    if exp < -4 or exp >= eprec:
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        return f"{neg}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= nd:
        return neg + ds + "0" * (dp - nd)
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def go_quote(text: str) -> str:
    """strconv.Quote: a double-quoted Go string literal."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append(repr(ch)[1:-1] if ch not in "\a\v" else {"\a": "\\a", "\v": "\\v"}[ch])
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_format_value(value: Any) -> str:
    """fmt's %v of a template value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_g(value)
    if isinstance(value, int | str):
        return str(value)
    if value is None:
        return "<nil>"
    if isinstance(value, dict):
        inner = " ".join(f"{k}:{go_format_value(value[k])}" for k in sorted(value))
        return f"map[{inner}]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_format_value(v) for v in value) + "]"
    if isinstance(value, GoStruct):
        inner = " ".join(go_format_value(v) for v in value.fields.values())
        return ("&" if value.type_name.startswith("*") else "") + "{" + inner + "}"
    return str(value)


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+|\*)?)?([a-zA-Z%])")


def go_sprintf(fmt: str, args: list[Any]) -> str:
    """fmt.Sprintf for the verbs templates use: v s q d f F e E g G x X t c %."""
    out: list[str] = []
    pos = 0
    argi = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width_s, prec_s, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        width: int | None = None
        prec: int | None = None
        if width_s == "*" or prec_s == "*":
            for star in (width_s, prec_s):
                if star == "*":
                    n = args[argi] if argi < len(args) else None
                    argi += 1
                    if star is width_s:
                        width = n if isinstance(n, int) else None
                    else:
                        prec = n if isinstance(n, int) else None
        if width_s and width_s != "*":
            width = int(width_s)
        if prec_s is not None and prec_s != "*":
            prec = int(prec_s) if prec_s else 0
        elif m.group(0).find(".") >= 0 and prec is None and prec_s is None:
            prec = 0
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        out.append(_fmt_one(arg, flags, width, prec, verb))
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{go_type(a)}={go_format_value(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(text: str, flags: str, width: int | None) -> str:
    if width is None or len(text) >= width:
        return text
    return text.ljust(width) if "-" in flags else text.rjust(width)


def _fmt_one(arg: Any, flags: str, width: int | None, prec: int | None, verb: str) -> str:
    spec = "%" + flags + (str(width) if width is not None else "")
    spec += f".{prec}" if prec is not None else ""
    bad = f"%!{verb}({go_type(arg)}={go_format_value(arg)})"
    if arg is None:
        return "<nil>" if verb == "v" else f"%!{verb}(<nil>)"
    if isinstance(arg, bool):
        return _pad(go_format_value(arg), flags, width) if verb in "vt" else bad
    if isinstance(arg, float):
        special = _special(arg)
        if verb in "vgGeEfF" and special is not None:
            if "+" in flags and special == "NaN":
                special = "+NaN"
            return _pad(special, flags.replace("0", ""), width)
        if verb in "vgG":
            text = go_g(arg, -1 if prec is None else prec)
            if verb == "G":
                text = text.upper()
            if "+" in flags and not text.startswith("-"):
                text = "+" + text
            if "0" in flags and width is not None and "-" not in flags:
                sign = text[0] if text[0] in "+-" else ""
                return sign + text[len(sign) :].rjust(width - len(sign), "0")
            return _pad(text, flags, width)
        if verb in "eEfF":
            return (spec + verb.lower() if verb == "F" else spec + verb) % arg
        return bad
    if isinstance(arg, int):
        if verb in "vd":
            return (spec + "d") % arg
        if verb in "xXob":
            return format(
                arg, ("" if width is None else ("0" if "0" in flags else "") + str(width)) + verb
            )
        if verb == "c":
            return chr(arg)
        if verb == "q":
            return "'" + chr(arg) + "'"
        return bad
    if isinstance(arg, str):
        if verb in "vs":
            return (spec + "s") % arg
        if verb == "q":
            return _pad(go_quote(arg), flags, width)
        if verb in "xX":
            text = arg.encode().hex()
            return _pad(text.upper() if verb == "X" else text, flags, width)
        return bad
    if verb in "vs":
        return _pad(go_format_value(arg), flags, width)
    return bad


# ----------------------------------------------------------------------------- functions


class _ArgError(Exception):
    """Wrong argument count or type: Go reports these without "error calling"."""


def _want_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _ArgError(f"wrong type for value; expected string; got {go_type(value)}")
    return value


def _arity(name: str, args: tuple[Any, ...], want: int) -> None:
    if len(args) != want:
        raise _ArgError(f"wrong number of args for {name}: want {want} got {len(args)}")


_GO_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)\Z", re.I)


def to_float(value: Any) -> float:
    """Prometheus's convertToFloat: float64, int or a string strconv.ParseFloat accepts."""
    if isinstance(value, bool):
        raise ValueError("can't convert bool to float")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if not _GO_FLOAT.match(value):
            raise ValueError(f'strconv.ParseFloat: parsing "{value}": invalid syntax')
        return float(value)
    raise ValueError(f"can't convert {go_type(value)} to float")


def humanize(value: Any) -> str:
    v = to_float(value)
    if v == 0 or math.isnan(v) or math.isinf(v):
        return go_g(v, 4)
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
        return go_g(v, 4) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return go_g(v, 4) + prefix


def humanize1024(value: Any) -> str:
    v = to_float(value)
    if abs(v) <= 1 or math.isnan(v) or math.isinf(v):
        return go_g(v, 4)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix, v = p, v / 1024
    return go_g(v, 4) + prefix


def humanize_duration(value: Any) -> str:
    v = to_float(value)
    if math.isnan(v) or math.isinf(v):
        return go_g(v, 4)
    if v == 0:
        return go_g(v, 4) + "s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        v = abs(v)
        whole = int(v)
        secs, mins, hours, days = whole % 60, whole // 60 % 60, whole // 3600 % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {mins}m {secs}s"
        if hours:
            return f"{sign}{hours}h {mins}m {secs}s"
        if mins:
            return f"{sign}{mins}m {secs}s"
        return f"{sign}{go_g(v, 4)}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{go_g(v, 4)}{prefix}s"


def humanize_percentage(value: Any) -> str:
    return go_g(to_float(value) * 100, 4) + "%"


def _go_time(seconds: float) -> str:
    """Go's default time.Time formatting in UTC, as humanizeTimestamp prints it."""
    if math.isnan(seconds) or math.isinf(seconds):
        return go_g(seconds, 4)
    whole = math.floor(seconds)
    nanos = round((Decimal(repr(seconds)) - whole) * 1_000_000_000)
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=whole)
    frac = f".{nanos:09d}".rstrip("0") if nanos else ""
    return t.strftime("%Y-%m-%d %H:%M:%S") + frac + " +0000 UTC"


def title(value: Any) -> str:
    """Go's strings.Title: upper-case letters that follow a separator, leave the rest."""
    text = _want_str(value)
    out: list[str] = []
    prev = " "
    for ch in text:
        out.append(ch.upper() if _separator(prev) else ch)
        prev = ch
    return "".join(out)


def _separator(ch: str) -> bool:
    if ch.isascii():
        return not (ch.isalnum() or ch == "_")
    if ch.isalpha() or ch.isdigit():
        return False
    return ch.isspace()


def go_eq(a: Any, *others: Any) -> bool:
    if not others:
        raise ValueError("missing argument for comparison")
    ka = _kind(a)
    for b in others:
        kb = _kind(b)
        if ka != kb:
            if a is not None and b is not None:
                raise ValueError("incompatible types for comparison")
            continue
        if ka == "other":
            if a is None or b is None:
                if (a is None) == (b is None):
                    return True
                continue
            if isinstance(a, dict | list):
                raise ValueError(f"non-comparable type {_print(a)}: {go_type(a)}")
        if a == b:
            return True
    return False


def go_lt(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka in ("other", "bool") or kb in ("other", "bool"):
        if ka != kb and "other" not in (ka, kb):
            raise ValueError("incompatible types for comparison")
        raise ValueError("invalid type for comparison")
    if ka != kb:
        raise ValueError("incompatible types for comparison")
    return bool(a < b)


def go_le(a: Any, b: Any) -> bool:
    return go_lt(a, b) or go_eq(a, b)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def go_and(*args: Any) -> Any:
    if not args:
        raise _ArgError("wrong number of args for and: want at least 1 got 0")
    for a in args:
        if not truth(a):
            return a
    return args[-1]


def go_or(*args: Any) -> Any:
    if not args:
        raise _ArgError("wrong number of args for or: want at least 1 got 0")
    for a in args:
        if truth(a):
            return a
    return args[-1]


def go_len(value: Any) -> int:
    if isinstance(value, str | dict | list | tuple):
        return len(value.encode() if isinstance(value, str) else value)
    raise ValueError(f"len of type {go_type(value)}")


def go_index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key, "") if isinstance(key, str) else _bad_index(key)
        elif isinstance(value, list | tuple | str):
            if not isinstance(key, int) or not 0 <= key < len(value):
                raise ValueError(f"index out of range: {key}")
            value = value[key] if not isinstance(value, str) else value.encode()[key]
        else:
            raise ValueError(f"can't index item of type {go_type(value)}")
    return value


def _bad_index(key: Any) -> Any:
    raise ValueError(f"value has type {go_type(key)}; should be string")


def go_sprint(*args: Any) -> str:
    """fmt.Sprint: a space between operands only when neither side is a string."""
    out: list[str] = []
    for i, a in enumerate(args):
        if i > 0 and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append("<nil>" if a is None else go_format_value(a))
    return "".join(out)


def go_sprintln(*args: Any) -> str:
    return " ".join("<nil>" if a is None else go_format_value(a) for a in args) + "\n"


def go_printf(fmt: Any, *args: Any) -> str:
    return go_sprintf(_want_str(fmt), list(args))


def _html_escape(*args: Any) -> str:
    text = go_sprint(*args)
    for a, b in (("&", "&amp;"), ("'", "&#39;"), ('"', "&#34;"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(a, b)
    return text.replace("\x00", "\ufffd")


def _js_escape(*args: Any) -> str:
    text = go_sprint(*args)
    out = []
    for ch in text:
        if ch in "\\'\"<>&=":
            out.append(f"\\u{ord(ch):04X}" if ch in "<>&=" else "\\" + ch)
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _need(name: str, n: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function with Go's arity check, so `humanize 1 2` fails like Go does."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def checked(*args: Any) -> Any:
            _arity(name, args, n)
            return fn(*args)

        return checked

    return wrap


def _sample_of(value: Any) -> GoStruct:
    if not (isinstance(value, GoStruct) and value.type_name == "*template.sample"):
        raise _ArgError(f"wrong type for value; expected *template.sample; got {go_type(value)}")
    return value


def _first(result: Any) -> Any:
    if not isinstance(result, list):
        raise _ArgError(
            f"wrong type for value; expected template.queryResult; got {go_type(result)}"
        )
    if not result:
        raise ValueError("first() called on vector with no elements")
    return result[0]


def _sort_by_label(label: Any, result: Any) -> list[Any]:
    key = _want_str(label)
    if not isinstance(result, list):
        raise _ArgError(
            f"wrong type for value; expected template.queryResult; got {go_type(result)}"
        )
    return sorted(result, key=lambda s: s.fields["Labels"].get(key, ""))


def _parse_duration(text: Any) -> float:
    from scalelab.monitoring.rulefile import parse_duration_ms

    return parse_duration_ms(_want_str(text)) / 1000


def _strip_port(host: Any) -> str:
    text = _want_str(host)
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


def _no_query(q: Any) -> list[GoStruct]:
    raise ValueError("query is not available here")


_FUNCS: dict[str, Callable[..., Any]] = {
    "and": go_and,
    "or": go_or,
    "not": _need("not", 1)(lambda v: not truth(v)),
    "len": _need("len", 1)(go_len),
    "index": go_index,
    "print": go_sprint,
    "printf": go_printf,
    "println": go_sprintln,
    "eq": go_eq,
    "ne": _need("ne", 2)(lambda a, b: not go_eq(a, b)),
    "lt": _need("lt", 2)(go_lt),
    "le": _need("le", 2)(go_le),
    "gt": _need("gt", 2)(lambda a, b: not go_le(a, b)),
    "ge": _need("ge", 2)(lambda a, b: not go_lt(a, b)),
    "html": _html_escape,
    "js": _js_escape,
    "urlquery": lambda *a: quote_plus(go_sprint(*a), safe=""),
    "humanize": _need("humanize", 1)(humanize),
    "humanize1024": _need("humanize1024", 1)(humanize1024),
    "humanizeDuration": _need("humanizeDuration", 1)(humanize_duration),
    "humanizePercentage": _need("humanizePercentage", 1)(humanize_percentage),
    "humanizeTimestamp": _need("humanizeTimestamp", 1)(lambda v: _go_time(to_float(v))),
    "toTime": _need("toTime", 1)(lambda v: _go_time(to_float(v))),
    "title": _need("title", 1)(title),
    "toUpper": _need("toUpper", 1)(lambda s: _want_str(s).upper()),
    "toLower": _need("toLower", 1)(lambda s: _want_str(s).lower()),
    "match": _need("match", 2)(lambda p, s: re.search(_want_str(p), _want_str(s)) is not None),
    "reReplaceAll": _need("reReplaceAll", 3)(
        lambda p, r, s: re.sub(_want_str(p), _go_repl(_want_str(r)), _want_str(s))
    ),
    "safeHtml": _need("safeHtml", 1)(_want_str),
    "stripPort": _need("stripPort", 1)(_strip_port),
    "query": _need("query", 1)(_no_query),
    "first": _need("first", 1)(_first),
    "label": _need("label", 2)(
        lambda name, s: _sample_of(s).fields["Labels"].get(_want_str(name), "")
    ),
    "value": _need("value", 1)(lambda s: _sample_of(s).fields["Value"]),
    "strvalue": _need("strvalue", 1)(lambda s: _sample_of(s).fields["Labels"].get("__value__", "")),
    "sortByLabel": _need("sortByLabel", 2)(_sort_by_label),
    "args": lambda *a: {f"arg{i}": v for i, v in enumerate(a)},
    "externalURL": _need("externalURL", 0)(lambda: ""),
    "pathPrefix": _need("pathPrefix", 0)(lambda: ""),
    "graphLink": _need("graphLink", 1)(
        lambda e: f"/graph?g0.expr={quote_plus(_want_str(e))}&g0.tab=0"
    ),
    "tableLink": _need("tableLink", 1)(
        lambda e: f"/graph?g0.expr={quote_plus(_want_str(e))}&g0.tab=1"
    ),
    "parseDuration": _need("parseDuration", 1)(_parse_duration),
}


def make_funcs(
    query: Callable[[str], list[GoStruct]] | None = None,
    external_url: str = "",
) -> dict[str, Callable[..., Any]]:
    """The function table bound to one evaluation: `query` runs PromQL at its timestamp."""
    funcs = dict(_FUNCS)
    if query is not None:
        funcs["query"] = _need("query", 1)(lambda q: query(_want_str(q)))
    funcs["externalURL"] = _need("externalURL", 0)(lambda: external_url)
    funcs["pathPrefix"] = _need("pathPrefix", 0)(lambda: urlparse(external_url).path)
    return funcs


def _go_repl(repl: str) -> str:
    """Go's regexp replacement `$1`/`${name}` to Python's `\\g<1>`/`\\g<name>`."""
    out = repl.replace("\\", "\\\\")
    out = re.sub(r"\$\{(\w+)\}", r"\\g<\1>", out)
    out = re.sub(r"\$(\d+)", r"\\g<\1>", out)
    return re.sub(r"\$([A-Za-z_]\w*)", r"\\g<\1>", out).replace("$$", "$")


FUNC_NAMES = frozenset(_FUNCS)


def parse(text: str, name: str) -> Template:
    """Parse once (raises TemplateError, as Prometheus does when it loads rules)."""
    return Template(text, name, _FUNCS)


def alert_data(
    labels: Mapping[str, str], external_labels: Mapping[str, str], external_url: str, value: float
) -> GoStruct:
    """What `.` is in an alert template (Prometheus's AlertTemplateData)."""
    return GoStruct(
        "template.AlertTemplateData",
        {
            "Labels": dict(labels),
            "ExternalLabels": dict(external_labels),
            "ExternalURL": external_url,
            "Value": float(value),
        },
    )


def sample(labels: Mapping[str, str], value: float) -> GoStruct:
    """One element of a template `query` result."""
    return GoStruct("*template.sample", {"Labels": dict(labels), "Value": float(value)})


def expand(
    tmpl: Template,
    data: GoStruct,
    *,
    query: Callable[[str], list[GoStruct]] | None = None,
    external_url: str = "",
) -> str:
    """Expand with a function table bound to this evaluation; errors become the annotation
    text `<error expanding template: ...>`, as in Prometheus."""
    try:
        return tmpl.expand(data, make_funcs(query, external_url))
    except ExecError as exc:
        return f"<error expanding template: error executing template {tmpl.name}: {exc}>"
    except RecursionError:
        return f"<error expanding template: error executing template {tmpl.name}: too deep>"


__all__ = [
    "FUNC_NAMES",
    "ExecError",
    "GoStruct",
    "Template",
    "TemplateError",
    "alert_data",
    "expand",
    "go_format_value",
    "go_g",
    "go_quote",
    "go_sprintf",
    "make_funcs",
    "parse",
    "sample",
]
