"""Alert templates: the part of Go's text/template that Prometheus rule files use.

Prometheus expands alert labels and annotations with Go's text/template plus its own function
table, so a rule file written for Prometheus only works here if `{{ $value | humanize }}` gives
the same text. This module parses a template once, at rule-load time (so a misspelt function
fails the load, as in Prometheus), and executes it per alert. Supported: text, `{{- -}}` trims,
comments, pipelines with `|`, variables (`$labels`, `$value`, `$externalLabels`,
`$externalURL`, `$`, and `:=`/`=`), `.Field` chains, parenthesised pipelines, `if`/`else
if`/`else`, `range` (with `$i, $v :=` and `else`), `with`, and the functions of
template_funcs.py. Not supported: `define`, `template`, `block`, `break`, `continue`, method
calls.

Values keep Go's types apart where Prometheus users can see it: a number literal with a `.` or
exponent is a float64, without one an int, and `gt $value 80` (float64 against int) fails with
Go's "incompatible types for comparison". Formatting follows Go's fmt (`%v` of 1e6 is "1e+06").

This module executes templates and is what rule loading and evaluation call (`parse`,
`expand`); the lexer and parser are in template_parse.py, the function table in
template_funcs.py, and Go's value formatting in gofmt.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from scalelab.monitoring.gofmt import MISSING_VALUE, GoStruct, go_print, go_type, truth
from scalelab.monitoring.template_funcs import FUNC_NAMES, FUNCS, ArgError, make_funcs
from scalelab.monitoring.template_parse import (
    PREFIX_LEN,
    Action,
    Branch,
    Cmd,
    Field,
    Ident,
    Lit,
    Parser,
    Pipe,
    TemplateError,
)


class ExecError(Exception):
    """A template failed while expanding; Prometheus puts the message into the annotation."""


# ----------------------------------------------------------------------------- execution


def _location(name: str, text: str, pos: int) -> str:
    before = text[:pos]
    line = before.count("\n") + 1
    col = pos - (before.rfind("\n") + 1) + (PREFIX_LEN if line == 1 else 0)
    return f"{name}:{line}:{col}"


class Template:
    """A parsed template; `expand(data, funcs)` runs it. Construct with `parse`."""

    def __init__(self, text: str, name: str, funcs: Mapping[str, Callable[..., Any]]) -> None:
        self.text, self.name, self.funcs = text, name, funcs
        self.nodes = Parser(text, name, funcs).parse()

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
                    out.append(go_print(value))
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
        value: Any = MISSING_VALUE
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
            if final is not MISSING_VALUE:
                args.append(final)
            return self.call(first.name, args, cmd)
        if len(cmd.args) > 1 or final is not MISSING_VALUE:
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
        except ArgError as exc:
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
    raise err(f"range can't iterate over {go_print(value)}")


def parse(text: str, name: str) -> Template:
    """Parse once (raises TemplateError, as Prometheus does when it loads rules)."""
    return Template(text, name, FUNCS)


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
    "make_funcs",
    "parse",
    "sample",
]
