"""Parsing alert templates: the lexer, syntax tree and parser of Go's text/template.

What template.py executes; split from it because the front end is half the template language.
A template is parsed once, when its rule file loads, and errors read as Go's do
(`template: NAME:LINE: ...`); functions are looked up in the table the parser is given, so a
misspelt one fails the load. Which parts of text/template are supported is in template.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


class Parser:
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


def _number(text: str, parser: Parser, pos: int) -> int | float:
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
